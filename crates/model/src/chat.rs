//! Chat templates: the model's own Jinja template rendered with minijinja, configured the way
//! transformers' `apply_chat_template` configures Jinja2 (trim_blocks, lstrip_blocks, loop
//! controls, `raise_exception`, `strftime_now`, Python-style `tojson` and string methods).

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source_len", &self.source.len()).finish()
    }
}

const NAME: &str = "chat";

/// The work one render may do, in minijinja fuel (an instruction, or 64 bytes of data made,
/// costs one). A template comes from a model file, so it is untrusted input: without a budget,
/// `{% for i in range(100000) %}{% for j in range(100000) %}` never ends and `'x' * 10**8` in a
/// loop fills memory. Real templates spend tens of fuel per message (SmolLM2's: about 20), so
/// this passes conversations far longer than any context, and bounds a render to well under a
/// second and about 256 MB.
const FUEL: u64 = 4_000_000;

/// The largest `indent` `tojson` accepts (Python takes any; past this it only makes padding).
const MAX_INDENT: usize = 64;

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string()).map_err(|e| ModelError::Template(e.to_string()))?;
        Ok(Self { source: source.to_string(), env, bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a conversation. `add_generation_prompt` appends the assistant header, as for
    /// generation; training renders without it.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template(NAME).map_err(|e| ModelError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| ModelError::Template(format!("{e:#}")))
    }
}

/// Python's `json.dumps(x, ensure_ascii=False)` (transformers overrides Jinja's `tojson` with it):
/// `", "` and `": "` separators, no HTML escaping. `indent` gives the pretty form.
fn tojson(
    state: &minijinja::State<'_, '_>,
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    if indent.is_some_and(|n| n > MAX_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent must be at most {MAX_INDENT}"),
        ));
    }
    let mut json: serde_json::Value =
        serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if sort_keys == Some(true) {
        json.sort_all_objects();
    }
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    // Our filter's output is not charged by the engine: pay for it as the built-in one does.
    state.consume_fuel(out.len() as u64 / 4)?;
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `strftime_now(fmt)` for templates that stamp today's date (Llama 3.1). Supports the codes
/// those templates use: %d %m %Y %y %b %B %H %M %S %%.
fn strftime_now(fmt: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let (y, m, d) = (i64::from(now.year()), i64::from(u8::from(now.month())), i64::from(now.day()));
    let tod = i64::from(now.hour()) * 3600 + i64::from(now.minute()) * 60 + i64::from(now.second());
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").expect("compiles");
        let s = t.render(&[Message::new("user", "Hi")], true).expect("renders");
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_surfaces_the_templates_message() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").expect("compiles");
        let err = t.render(&[], false).expect_err("must fail");
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}", "", "")
            .expect("compiles");
        let s = t.render(&[Message::new("user", "<é>")], false).expect("renders");
        assert_eq!(
            s,
            "[{\"role\": \"user\", \"content\": \"<é>\"}]|{\n  \"role\": \"user\",\n  \"content\": \"<é>\"\n}"
        );
    }

    // Fuzzing (fuzz/fuzz_targets/chat_template.rs): a template from a model file is user input;
    // these rendered without end or filled memory before renders had a fuel budget.
    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .expect("compiles");
        let started = std::time::Instant::now();
        let err = t.render(&[], false).expect_err("must run out of fuel");
        assert!(err.to_string().to_lowercase().contains("fuel"), "{err}");
        assert!(started.elapsed().as_secs() < 5, "took {:?}", started.elapsed());
    }

    #[test]
    fn a_template_that_fills_memory_runs_out_of_fuel() {
        let t = ChatTemplate::new("{% for i in range(1000) %}{{ 'x' * 100000000 }}{% endfor %}", "", "")
            .expect("compiles");
        t.render(&[], false).expect_err("must run out of fuel");
    }

    #[test]
    fn tojson_refuses_an_indent_that_only_makes_padding() {
        let t = ChatTemplate::new("{{ messages | tojson(indent=100000000000) }}", "", "").expect("compiles");
        let err = t.render(&[Message::new("user", "Hi")], false).expect_err("must fail");
        assert!(err.to_string().contains("indent"), "{err}");
    }

    #[test]
    fn the_fuel_budget_passes_conversations_longer_than_any_context() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").expect("compiles");
        let msgs: Vec<Message> = (0..20_000)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "Hello there"))
            .collect();
        let s = t.render(&msgs, true).expect("renders");
        assert_eq!(s.matches("<|im_start|>").count(), 20_001);
    }
}
