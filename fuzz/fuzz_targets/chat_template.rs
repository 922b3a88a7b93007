//! Chat templates over arbitrary conversations: the real templates of `fixtures/` (SmolLM2's and
//! the Jinja feature cases) with arbitrary messages, and arbitrary template text — a template
//! comes from a model file, so it is user input too. Rendering must end in text or an error,
//! quickly, whatever the template does.
#![no_main]
#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use ferrotune_model::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

const FIXTURE: &str = include_str!("../../fixtures/chat_templates.json");

/// The fixture's templates, compiled once.
fn templates() -> &'static Vec<ChatTemplate> {
    static T: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    T.get_or_init(|| {
        let v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
        let s = |k: &str| v[k].as_str().expect("token").to_string();
        let (bos, eos) = (s("bos_token"), s("eos_token"));
        let map = v["templates"].as_object().expect("templates");
        map.values()
            .map(|t| ChatTemplate::new(t.as_str().expect("template"), &bos, &eos).expect("fixture template"))
            .collect()
    })
}

fn messages(parts: &[String]) -> Vec<Message> {
    parts.chunks(2).map(|c| Message::new(c[0].clone(), c.get(1).cloned().unwrap_or_default())).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = common::mode(data) else { return };
    let parts = common::parts(rest);
    let generation = mode & 0x80 != 0;
    if mode & 1 == 0 {
        let all = templates();
        let t = &all[(mode as usize >> 1) % all.len()];
        let msgs = messages(&parts);
        if let Ok(text) = t.render(&msgs, generation) {
            // The real templates copy every message's content into the prompt.
            if (mode as usize >> 1) % all.len() == 0 {
                for m in &msgs {
                    assert!(text.contains(&m.content), "a message's content is missing from the prompt");
                }
            }
        }
    } else {
        let Some((source, rest)) = parts.split_first() else { return };
        if let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") {
            let _ = t.render(&messages(rest), generation);
        }
    }
});
