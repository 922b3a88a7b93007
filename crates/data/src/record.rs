//! The four record formats of DESIGN.md and their common view as a conversation.
//!
//! chat `{"messages":[{"role","content","weight"?}]}`, alpaca `{"instruction","input"?,"output"}`,
//! completion `{"prompt","completion"}`, text `{"text"}`; any record may carry `"metadata":{…}`.
//! Alpaca and completion records become one user turn and one assistant turn.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Chat,
    Alpaca,
    Completion,
    Text,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Chat, Format::Alpaca, Format::Completion, Format::Text];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Chat => "chat",
            Format::Alpaca => "alpaca",
            Format::Completion => "completion",
            Format::Text => "text",
        }
    }

    /// The top-level keys a record of this format may have (besides `metadata`).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Format::Chat => &["messages"],
            Format::Alpaca => &["instruction", "input", "output"],
            Format::Completion => &["prompt", "completion"],
            Format::Text => &["text"],
        }
    }

    /// Which format a set of top-level keys points to: the first format one of whose keys is
    /// present (`messages` → chat, `instruction`/`output` → alpaca, `prompt`/`completion` →
    /// completion, `text` → text).
    pub fn detect<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<Format> {
        let has = |k: &str| keys.clone().any(|x| x == k);
        if has("messages") {
            Some(Format::Chat)
        } else if has("instruction") || has("output") {
            Some(Format::Alpaca)
        } else if has("prompt") || has("completion") {
            Some(Format::Completion)
        } else if has("text") {
            Some(Format::Text)
        } else {
            None
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format `{s}` (expected chat, alpaca, completion or text)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
    /// OpenAI's per-turn `weight` (0 or 1) on assistant turns; `Some(0)` keeps the turn out of
    /// the loss. `None` = not written (trained on, for assistant turns).
    pub weight: Option<u8>,
}

impl Turn {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), weight: None }
    }

    /// Whether this turn is a training target: an assistant turn not marked `weight: 0`.
    pub fn is_target(&self) -> bool {
        self.role == Role::Assistant && self.weight != Some(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Chat(Vec<Turn>),
    Alpaca { instruction: String, input: Option<String>, output: String },
    Completion { prompt: String, completion: String },
    Text(String),
}

/// Where a record came from, for error messages. Records built in memory have an empty file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub origin: Origin,
    pub body: Body,
    pub metadata: Option<Map<String, Value>>,
}

impl Record {
    pub fn new(body: Body) -> Self {
        Self { origin: Origin::default(), body, metadata: None }
    }

    pub fn chat(turns: Vec<Turn>) -> Self {
        Self::new(Body::Chat(turns))
    }

    pub fn format(&self) -> Format {
        match self.body {
            Body::Chat(_) => Format::Chat,
            Body::Alpaca { .. } => Format::Alpaca,
            Body::Completion { .. } => Format::Completion,
            Body::Text(_) => Format::Text,
        }
    }

    /// The record as a conversation. Alpaca: user = instruction, plus `"\n\n" + input` when the
    /// input is not empty (the Alpaca prompt's order); assistant = output. Completion: user =
    /// prompt, assistant = completion. Text records have no turns.
    pub fn turns(&self) -> Cow<'_, [Turn]> {
        match &self.body {
            Body::Chat(t) => Cow::Borrowed(t),
            Body::Alpaca { instruction, input, output } => {
                let user = match input.as_deref() {
                    Some(i) if !i.trim().is_empty() => format!("{instruction}\n\n{i}"),
                    _ => instruction.clone(),
                };
                Cow::Owned(vec![Turn::new(Role::User, user), Turn::new(Role::Assistant, output.clone())])
            }
            Body::Completion { prompt, completion } => Cow::Owned(vec![
                Turn::new(Role::User, prompt.clone()),
                Turn::new(Role::Assistant, completion.clone()),
            ]),
            Body::Text(_) => Cow::Owned(Vec::new()),
        }
    }

    /// Every free-text field with its JSON path, in record order.
    pub fn texts(&self) -> Vec<(String, &str)> {
        match &self.body {
            Body::Chat(t) => t
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("messages[{i}].content"), t.content.as_str()))
                .collect(),
            Body::Alpaca { instruction, input, output } => {
                let mut v = vec![("instruction".to_string(), instruction.as_str())];
                if let Some(i) = input {
                    v.push(("input".into(), i.as_str()));
                }
                v.push(("output".into(), output.as_str()));
                v
            }
            Body::Completion { prompt, completion } => {
                vec![("prompt".into(), prompt.as_str()), ("completion".into(), completion.as_str())]
            }
            Body::Text(t) => vec![("text".into(), t.as_str())],
        }
    }

    /// Whether `pred` holds for some free-text field ([`Record::texts`] without the field paths).
    pub fn any_text(&self, mut pred: impl FnMut(&str) -> bool) -> bool {
        match &self.body {
            Body::Chat(t) => t.iter().any(|t| pred(&t.content)),
            Body::Alpaca { instruction, input, output } => {
                pred(instruction) || input.as_deref().is_some_and(&mut pred) || pred(output)
            }
            Body::Completion { prompt, completion } => pred(prompt) || pred(completion),
            Body::Text(t) => pred(t),
        }
    }

    /// Apply `f` to every free-text field (PII redaction); returns whether anything changed.
    pub fn map_texts(&mut self, mut f: impl FnMut(&str) -> Option<String>) -> bool {
        let mut changed = false;
        let mut apply = |s: &mut String| {
            if let Some(new) = f(s)
                && new != *s
            {
                *s = new;
                changed = true;
            }
        };
        match &mut self.body {
            Body::Chat(t) => t.iter_mut().for_each(|t| apply(&mut t.content)),
            Body::Alpaca { instruction, input, output } => {
                apply(instruction);
                if let Some(i) = input {
                    apply(i);
                }
                apply(output);
            }
            Body::Completion { prompt, completion } => {
                apply(prompt);
                apply(completion);
            }
            Body::Text(t) => apply(t),
        }
        changed
    }

    /// The text before the final target (the "prompt") and the final target itself, for the
    /// conflicting-answers check. Text records have neither.
    pub fn prompt_and_answer(&self) -> Option<(String, &str)> {
        let mut prompt = String::new();
        let answer = self.prompt_and_answer_into(&mut prompt)?;
        Some((prompt, answer))
    }

    /// [`Record::prompt_and_answer`] with the prompt written into `prompt` (cleared first).
    pub fn prompt_and_answer_into(&self, prompt: &mut String) -> Option<&str> {
        prompt.clear();
        if let Body::Text(_) = self.body {
            return None;
        }
        let turns = self.turns();
        let last = turns.iter().rposition(|t| t.role == Role::Assistant)?;
        prompt.reserve(turns[..last].iter().map(|t| t.content.len() + 12).sum());
        for t in &turns[..last] {
            prompt.push_str(t.role.as_str());
            prompt.push('\u{1f}');
            prompt.push_str(&t.content);
            prompt.push('\u{1e}');
        }
        match &self.body {
            Body::Chat(t) => Some(t[last].content.as_str()),
            Body::Alpaca { output, .. } => Some(output.as_str()),
            Body::Completion { completion, .. } => Some(completion.as_str()),
            Body::Text(_) => None,
        }
    }

    /// The record in its own format as a JSON object (what `prepare` writes).
    pub fn to_json(&self) -> Value {
        let mut obj = match &self.body {
            Body::Chat(turns) => {
                let msgs: Vec<Value> = turns
                    .iter()
                    .map(|t| {
                        let mut m = json!({"role": t.role.as_str(), "content": t.content});
                        if let (Some(w), Some(o)) = (t.weight, m.as_object_mut()) {
                            o.insert("weight".into(), json!(w));
                        }
                        m
                    })
                    .collect();
                json!({"messages": msgs})
            }
            Body::Alpaca { instruction, input, output } => match input {
                Some(i) => json!({"instruction": instruction, "input": i, "output": output}),
                None => json!({"instruction": instruction, "output": output}),
            },
            Body::Completion { prompt, completion } => json!({"prompt": prompt, "completion": completion}),
            Body::Text(t) => json!({"text": t}),
        };
        if let (Some(meta), Some(o)) = (&self.metadata, obj.as_object_mut()) {
            o.insert("metadata".into(), Value::Object(meta.clone()));
        }
        obj
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_input_joins_the_instruction_after_a_blank_line() {
        let r = Record::new(Body::Alpaca {
            instruction: "Summarize".into(),
            input: Some("Text".into()),
            output: "S".into(),
        });
        let t = r.turns();
        assert_eq!(t[0], Turn::new(Role::User, "Summarize\n\nText"));
        assert_eq!(t[1], Turn::new(Role::Assistant, "S"));
        let r = Record::new(Body::Alpaca {
            instruction: "Hi".into(),
            input: Some("  ".into()),
            output: "S".into(),
        });
        assert_eq!(r.turns()[0].content, "Hi");
    }

    #[test]
    fn format_detection_follows_the_distinguishing_keys() {
        assert_eq!(Format::detect(["messages", "metadata"].into_iter()), Some(Format::Chat));
        assert_eq!(Format::detect(["output"].into_iter()), Some(Format::Alpaca));
        assert_eq!(Format::detect(["prompt"].into_iter()), Some(Format::Completion));
        assert_eq!(Format::detect(["text"].into_iter()), Some(Format::Text));
        assert_eq!(Format::detect(["foo"].into_iter()), None);
    }

    #[test]
    fn weight_and_metadata_survive_to_json() {
        let mut t = Turn::new(Role::Assistant, "a");
        t.weight = Some(0);
        let mut r = Record::chat(vec![Turn::new(Role::User, "q"), t]);
        r.metadata = Some(serde_json::from_str(r#"{"topic":"x"}"#).expect("json"));
        assert_eq!(
            r.to_json(),
            json!({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":0}],"metadata":{"topic":"x"}})
        );
    }
}
