//! Checking one JSON value against the record formats. Every problem in the row is reported (not
//! only the first), each with its field path and a fix hint; a [`Record`] comes back only when the
//! row has no error. The checks are the OpenAI fine-tuning cookbook's format checks plus ours.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::finding::{Code, Finding};
use crate::record::{Body, Format, Origin, Record, Role, Turn};

/// The outcome of parsing one row.
#[derive(Debug, Default)]
pub struct Parsed {
    pub record: Option<Record>,
    pub findings: Vec<Finding>,
}

struct Ctx<'a> {
    file: &'a Arc<str>,
    line: u64,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        code: Code,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.findings.push(Finding::new(code, self.file, Some(self.line), field, message, hint));
    }

    fn has_errors(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Check `value` (row `line` of `file`) and build its record. With `expected`, the row must be of
/// that format; otherwise the format is detected from the row's keys.
pub fn parse_value(value: Value, file: &Arc<str>, line: u64, expected: Option<Format>) -> Parsed {
    let mut cx = Ctx { file, line, findings: Vec::new() };
    let Value::Object(mut obj) = value else {
        cx.push(
            Code::NotAnObject,
            "",
            format!("the row is {}, not a JSON object", type_name(&value)),
            "write one JSON object per line",
        );
        return Parsed { record: None, findings: cx.findings };
    };
    let format = match expected.or_else(|| Format::detect(obj.keys().map(String::as_str))) {
        Some(f) => f,
        None => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            cx.push(
                Code::UnknownFormat,
                "",
                format!("cannot tell the format from the keys {keys:?}"),
                "use `messages` (chat), `instruction`+`output` (alpaca), `prompt`+`completion` or `text`",
            );
            return Parsed { record: None, findings: cx.findings };
        }
    };
    for key in obj.keys() {
        if key != "metadata" && !format.keys().contains(&key.as_str()) {
            cx.push(
                Code::UnknownKey,
                key.clone(),
                format!(
                    "unknown key `{key}` for a {} record (allowed: {}, metadata)",
                    format.as_str(),
                    format.keys().join(", ")
                ),
                "remove it, or move it under `metadata`",
            );
        }
    }
    let metadata = match obj.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            cx.push(
                Code::WrongType,
                "metadata",
                format!("`metadata` is {}, not an object", type_name(&other)),
                "make `metadata` a JSON object like {\"topic\": \"billing\"}",
            );
            None
        }
    };
    let body = match format {
        Format::Chat => parse_chat(&mut cx, &mut obj),
        Format::Alpaca => parse_alpaca(&mut cx, &mut obj),
        Format::Completion => parse_completion(&mut cx, &mut obj),
        Format::Text => {
            let text = required_string(&mut cx, &mut obj, "text", "a text record needs a `text` string");
            if let Some(t) = &text
                && t.trim().is_empty()
            {
                cx.push(
                    Code::EmptyTarget,
                    "text",
                    "`text` is empty or whitespace",
                    "write the text to train on, or drop the row",
                );
            }
            text.map(Body::Text)
        }
    };
    let record = match body {
        Some(body) if !cx.has_errors() => {
            Some(Record { origin: Origin { file: file.clone(), line }, body, metadata })
        }
        _ => None,
    };
    Parsed { record, findings: cx.findings }
}

/// The common clean chat row, read straight from the JSON text: only `messages` (each with
/// exactly `role` and `content`, both strings) and an optional `metadata` object. Any other
/// shape (a `weight`, an unknown key, a duplicate key, a wrong type, bad JSON) fails to
/// deserialize and the row goes through [`parse_value`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanChat<'a> {
    #[serde(borrow)]
    messages: Vec<CleanMessage<'a>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

/// [`parse_value`] of the parsed `text` for rows of the common clean chat shape, without
/// building the JSON tree (a map per message and a `String` per key); `None` for any other row
/// (the caller then parses it in full). The conversation checks are the same function, so the
/// findings are the same (tested against `parse_value` on generated rows).
pub fn parse_clean_chat(text: &str, file: &Arc<str>, line: u64, expected: Option<Format>) -> Option<Parsed> {
    if expected.is_some_and(|f| f != Format::Chat) {
        return None;
    }
    let row: CleanChat<'_> = serde_json::from_str(text).ok()?;
    let mut turns = Vec::with_capacity(row.messages.len());
    for m in row.messages {
        turns.push(Turn { role: Role::parse(&m.role)?, content: m.content.into_owned(), weight: None });
    }
    let mut cx = Ctx { file, line, findings: Vec::new() };
    check_conversation(&mut cx, &turns);
    let record = (!cx.has_errors()).then(|| Record {
        origin: Origin { file: file.clone(), line },
        body: Body::Chat(turns),
        metadata: row.metadata,
    });
    Some(Parsed { record, findings: cx.findings })
}

fn required_string(
    cx: &mut Ctx<'_>,
    obj: &mut Map<String, Value>,
    key: &str,
    missing_hint: &str,
) -> Option<String> {
    match obj.remove(key) {
        None => {
            cx.push(Code::MissingField, key, format!("missing `{key}`"), missing_hint);
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            cx.push(
                Code::WrongType,
                key,
                format!("`{key}` is {}, not a string", type_name(&other)),
                format!("make `{key}` a string"),
            );
            None
        }
    }
}

fn optional_string(cx: &mut Ctx<'_>, obj: &mut Map<String, Value>, key: &str) -> Option<Option<String>> {
    match obj.remove(key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(other) => {
            cx.push(
                Code::WrongType,
                key,
                format!("`{key}` is {}, not a string", type_name(&other)),
                format!("make `{key}` a string or remove it"),
            );
            None
        }
    }
}

fn empty_target(cx: &mut Ctx<'_>, field: &str, s: &str) {
    if s.trim().is_empty() {
        cx.push(
            Code::EmptyTarget,
            field,
            format!("`{field}` is empty or whitespace: nothing to learn"),
            "write the answer the model should give, or drop the row",
        );
    }
}

fn parse_alpaca(cx: &mut Ctx<'_>, obj: &mut Map<String, Value>) -> Option<Body> {
    let instruction = required_string(cx, obj, "instruction", "add the task as `instruction`");
    let input = optional_string(cx, obj, "input");
    let output = required_string(cx, obj, "output", "an alpaca record needs the answer as `output`");
    if let Some(o) = &output {
        empty_target(cx, "output", o);
    }
    Some(Body::Alpaca { instruction: instruction?, input: input?, output: output? })
}

fn parse_completion(cx: &mut Ctx<'_>, obj: &mut Map<String, Value>) -> Option<Body> {
    let prompt = required_string(cx, obj, "prompt", "add the input text as `prompt`");
    let completion =
        required_string(cx, obj, "completion", "add the text the model should produce as `completion`");
    if let Some(c) = &completion {
        empty_target(cx, "completion", c);
    }
    Some(Body::Completion { prompt: prompt?, completion: completion? })
}

fn parse_chat(cx: &mut Ctx<'_>, obj: &mut Map<String, Value>) -> Option<Body> {
    let messages = match obj.remove("messages") {
        None => {
            cx.push(
                Code::MissingField,
                "messages",
                "missing `messages`",
                "add `messages`: a list of {\"role\", \"content\"} objects",
            );
            return None;
        }
        Some(Value::Array(a)) => a,
        Some(other) => {
            cx.push(
                Code::WrongType,
                "messages",
                format!("`messages` is {}, not a list", type_name(&other)),
                "make `messages` a list of {\"role\", \"content\"} objects",
            );
            return None;
        }
    };
    let mut turns = Vec::with_capacity(messages.len());
    let mut complete = true;
    for (i, m) in messages.into_iter().enumerate() {
        match parse_message(cx, i, m) {
            Some(t) => turns.push(t),
            None => complete = false,
        }
    }
    if !complete {
        return None;
    }
    check_conversation(cx, &turns);
    Some(Body::Chat(turns))
}

fn parse_message(cx: &mut Ctx<'_>, i: usize, m: Value) -> Option<Turn> {
    let at = |k: &str| format!("messages[{i}].{k}");
    let Value::Object(mut m) = m else {
        cx.push(
            Code::WrongType,
            format!("messages[{i}]"),
            format!("message is {}, not an object", type_name(&m)),
            "write each message as {\"role\": ..., \"content\": ...}",
        );
        return None;
    };
    for key in m.keys() {
        if !matches!(key.as_str(), "role" | "content" | "weight") {
            cx.push(
                Code::UnknownKey,
                at(key),
                format!("unknown message key `{key}` (allowed: role, content, weight)"),
                "remove it; per-example data goes under the record's `metadata`",
            );
        }
    }
    let role = match m.remove("role") {
        None => {
            cx.push(
                Code::MissingField,
                at("role"),
                "message has no `role`",
                "add \"role\": \"system\", \"user\" or \"assistant\"",
            );
            None
        }
        Some(Value::String(r)) => match Role::parse(&r) {
            Some(role) => Some(role),
            None => {
                cx.push(
                    Code::UnknownRole,
                    at("role"),
                    format!("unknown role `{r}`"),
                    "use \"system\", \"user\" or \"assistant\"",
                );
                None
            }
        },
        Some(other) => {
            cx.push(
                Code::WrongType,
                at("role"),
                format!("`role` is {}, not a string", type_name(&other)),
                "use \"system\", \"user\" or \"assistant\"",
            );
            None
        }
    };
    let content = match m.remove("content") {
        None => {
            cx.push(
                Code::MissingField,
                at("content"),
                "message has no `content`",
                "add the message text as \"content\"",
            );
            None
        }
        Some(Value::String(c)) => Some(c),
        Some(other) => {
            cx.push(
                Code::WrongType,
                at("content"),
                format!("`content` is {}, not a string", type_name(&other)),
                "make `content` a plain string",
            );
            None
        }
    };
    let weight = match m.remove("weight") {
        None => Some(None),
        Some(w) => match w.as_u64() {
            Some(v @ (0 | 1)) if role == Some(Role::Assistant) => Some(Some(v as u8)),
            Some(0 | 1) => {
                cx.push(
                    Code::BadWeight,
                    at("weight"),
                    "`weight` is only allowed on assistant messages",
                    "remove `weight` from this message",
                );
                None
            }
            _ => {
                cx.push(
                    Code::BadWeight,
                    at("weight"),
                    format!("`weight` is {w}, expected 0 or 1"),
                    "use 0 to skip the turn in training, 1 (or no weight) to train on it",
                );
                None
            }
        },
    };
    Some(Turn { role: role?, content: content?, weight: weight? })
}

fn check_conversation(cx: &mut Ctx<'_>, turns: &[Turn]) {
    let Some(last_assistant) = turns.iter().rposition(|t| t.role == Role::Assistant) else {
        cx.push(
            Code::NoAssistant,
            "messages",
            "no assistant message: nothing to learn",
            "add the answer as a message with \"role\": \"assistant\"",
        );
        return;
    };
    if last_assistant + 1 != turns.len() {
        cx.push(
            Code::AssistantNotLast,
            format!("messages[{}]", turns.len() - 1),
            "the conversation ends with a non-assistant message, which would never be trained on",
            "end the conversation with the assistant's answer, or drop the trailing messages",
        );
    }
    for (i, t) in turns.iter().enumerate() {
        if t.role == Role::Assistant {
            empty_target(cx, &format!("messages[{i}].content"), &t.content);
        }
    }
    if !turns.iter().any(Turn::is_target) {
        cx.push(
            Code::NoTrainableTurn,
            "messages",
            "every assistant message has weight 0: nothing to learn",
            "set weight 1 (or remove weight) on at least one assistant message",
        );
    }
    if !turns.iter().any(|t| t.role == Role::System) {
        cx.push(
            Code::MissingSystem,
            "messages",
            "no system message",
            "add the system prompt you will use in production, so training matches serving",
        );
    }
    if !turns.iter().any(|t| t.role == Role::User) {
        cx.push(
            Code::MissingUser,
            "messages",
            "no user message",
            "add the user's request before the assistant's answer",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Parsed {
        let file: Arc<str> = "t.jsonl".into();
        parse_value(serde_json::from_str(s).expect("json"), &file, 7, None)
    }

    fn codes(p: &Parsed) -> Vec<(Code, String)> {
        p.findings.iter().map(|f| (f.code, f.field.clone())).collect()
    }

    #[test]
    fn a_clean_chat_record_parses_without_findings() {
        let p = parse(
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"metadata":{"k":1}}"#,
        );
        assert!(p.findings.is_empty(), "{:?}", p.findings);
        let r = p.record.expect("record");
        assert_eq!(r.format(), Format::Chat);
        assert_eq!(r.origin.line, 7);
    }

    #[test]
    fn every_problem_in_a_chat_row_is_reported_with_its_field() {
        let p = parse(
            r#"{"messages":[{"role":"robot","content":"q"},{"role":"user","content":5,"name":"x"},{"content":"a"}],"extra":1}"#,
        );
        assert!(p.record.is_none());
        let c = codes(&p);
        assert!(c.contains(&(Code::UnknownKey, "extra".into())), "{c:?}");
        assert!(c.contains(&(Code::UnknownRole, "messages[0].role".into())), "{c:?}");
        assert!(c.contains(&(Code::WrongType, "messages[1].content".into())), "{c:?}");
        assert!(c.contains(&(Code::UnknownKey, "messages[1].name".into())), "{c:?}");
        assert!(c.contains(&(Code::MissingField, "messages[2].role".into())), "{c:?}");
        assert!(p.findings.iter().all(|f| f.line == Some(7) && !f.hint.is_empty()));
    }

    #[test]
    fn conversation_level_errors_and_warnings_are_found() {
        let p = parse(r#"{"messages":[{"role":"assistant","content":"  "},{"role":"user","content":"q"}]}"#);
        let c: Vec<Code> = codes(&p).into_iter().map(|x| x.0).collect();
        assert!(
            c.contains(&Code::AssistantNotLast)
                && c.contains(&Code::EmptyTarget)
                && c.contains(&Code::MissingSystem),
            "{c:?}"
        );
        let p = parse(r#"{"messages":[{"role":"user","content":"q"}]}"#);
        assert!(codes(&p).iter().any(|x| x.0 == Code::NoAssistant));
        let p = parse(
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":0}]}"#,
        );
        assert!(codes(&p).iter().any(|x| x.0 == Code::NoTrainableTurn));
    }

    #[test]
    fn weight_must_be_zero_or_one_and_only_on_assistant_turns() {
        let p = parse(
            r#"{"messages":[{"role":"user","content":"q","weight":1},{"role":"assistant","content":"a","weight":0.5}]}"#,
        );
        let c = codes(&p);
        assert!(c.contains(&(Code::BadWeight, "messages[0].weight".into())), "{c:?}");
        assert!(c.contains(&(Code::BadWeight, "messages[1].weight".into())), "{c:?}");
    }

    /// Chat rows of many shapes, clean and not, as JSON text.
    fn chat_rows() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let role = proptest::sample::select(vec!["system", "user", "assistant", "robot", ""])
            .prop_map(|r| serde_json::json!(r));
        let value = prop_oneof![
            Just(serde_json::json!("text")),
            Just(serde_json::json!("  ")),
            Just(serde_json::json!("")),
            Just(serde_json::json!("esc \" \\ \n \u{e9}")),
            Just(serde_json::json!(5)),
            Just(serde_json::json!(null)),
        ];
        let message = (
            proptest::option::of(role),
            proptest::option::of(value.clone()),
            proptest::option::of(0..3u8),
            any::<bool>(),
        )
            .prop_map(|(r, c, w, extra)| {
                let mut m = serde_json::Map::new();
                if let Some(r) = r {
                    m.insert("role".into(), r);
                }
                if let Some(c) = c {
                    m.insert("content".into(), c);
                }
                if let Some(w) = w {
                    m.insert("weight".into(), serde_json::json!(w));
                }
                if extra {
                    m.insert("name".into(), serde_json::json!("x"));
                }
                Value::Object(m)
            });
        let clean = (
            proptest::sample::select(vec!["system", "user", "assistant"]),
            proptest::sample::select(vec!["text", "  ", "", "esc \" \\ \n \u{e9}", "😀"]),
        )
            .prop_map(|(r, c)| serde_json::json!({"role": r, "content": c}));
        let message = prop_oneof![4 => clean, 1 => message];
        let meta = prop_oneof![
            Just(None),
            Just(Some(serde_json::json!(null))),
            Just(Some(serde_json::json!({"topic": "a", "n": 1}))),
            Just(Some(serde_json::json!(3)))
        ];
        (
            proptest::collection::vec(message, 0..5),
            meta,
            proptest::bool::weighted(0.1),
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(msgs, meta, extra, dup)| {
                let mut s = format!("{{\"messages\": {}", Value::Array(msgs));
                if let Some(m) = meta {
                    s.push_str(&format!(", \"metadata\": {m}"));
                }
                if extra {
                    s.push_str(", \"extra\": 1");
                }
                if dup {
                    s.push_str(", \"messages\": []");
                }
                s.push('}');
                s
            })
    }

    thread_local! {
        static CLEAN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..proptest::prelude::ProptestConfig::default() })]
        #[test]
        fn the_clean_chat_path_gives_what_the_full_parse_gives(text in chat_rows(), forced in proptest::bool::ANY) {
            let file: Arc<str> = "t.jsonl".into();
            let expected = forced.then_some(Format::Chat);
            if let Some(fast) = parse_clean_chat(&text, &file, 3, expected) {
                CLEAN.with(|n| n.set(n.get() + 1));
                let slow = parse_value(serde_json::from_str(&text).expect("valid json"), &file, 3, expected);
                proptest::prop_assert_eq!(fast.record, slow.record);
                proptest::prop_assert_eq!(fast.findings, slow.findings);
            }
        }
    }

    #[test]
    fn the_generated_rows_exercise_the_clean_path() {
        // Re-run the property here to count how many rows took the clean path.
        the_clean_chat_path_gives_what_the_full_parse_gives();
        assert!(CLEAN.with(std::cell::Cell::get) > 500, "{}", CLEAN.with(std::cell::Cell::get));
    }

    #[test]
    fn the_clean_chat_path_takes_clean_rows_and_leaves_the_rest() {
        let file: Arc<str> = "t.jsonl".into();
        let clean = r#"{"messages":[{"role":"user","content":"q\u00e9"},{"role":"assistant","content":"a"}],"metadata":{"k":1}}"#;
        assert!(parse_clean_chat(clean, &file, 1, None).is_some_and(|p| p.record.is_some()));
        assert!(parse_clean_chat(clean, &file, 1, Some(Format::Text)).is_none());
        for other in [
            r#"{"messages":[{"role":"user","content":"q","weight":1}]}"#,
            r#"{"messages":[],"x":1}"#,
            r#"{"messages":[{"role":"robot","content":"q"}]}"#,
            "[1]",
            "{bad",
        ] {
            assert!(parse_clean_chat(other, &file, 1, None).is_none(), "{other}");
        }
    }

    #[test]
    fn alpaca_without_output_is_an_error_naming_the_field() {
        let p = parse(r#"{"instruction":"do it","input":"x"}"#);
        assert_eq!(codes(&p), vec![(Code::MissingField, "output".into())]);
        let p = parse(r#"{"instruction":"do it","input":null,"output":"done"}"#);
        assert!(p.record.is_some() && p.findings.is_empty());
    }

    #[test]
    fn non_objects_and_unknown_shapes_are_refused() {
        assert_eq!(codes(&parse("[1,2]"))[0].0, Code::NotAnObject);
        assert_eq!(codes(&parse(r#"{"question":"q"}"#))[0].0, Code::UnknownFormat);
        assert_eq!(codes(&parse(r#"{"text":"t","metadata":3}"#))[0].0, Code::WrongType);
    }

    #[test]
    fn a_forced_format_reports_the_missing_keys_of_that_format() {
        let file: Arc<str> = "t.jsonl".into();
        let v = serde_json::json!({"text": "hello"});
        let p = parse_value(v, &file, 1, Some(Format::Completion));
        let c = codes(&p);
        assert!(
            c.contains(&(Code::UnknownKey, "text".into()))
                && c.contains(&(Code::MissingField, "prompt".into())),
            "{c:?}"
        );
    }
}
