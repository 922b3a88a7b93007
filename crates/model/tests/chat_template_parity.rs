//! minijinja renders chat templates byte-identically to Jinja2 as transformers configures it
//! (fixtures from scripts/parity/chat_template_fixtures.py; SmolLM2's template plus templates that
//! exercise namespace(), slicing, string methods, tojson and whitespace control).

mod common_real;

use ferrotune_model::{ChatTemplate, Message};

#[test]
fn templates_render_like_jinja2() {
    let fx = common_real::fixture("chat_templates.json");
    let bos = fx["bos_token"].as_str().expect("bos");
    let eos = fx["eos_token"].as_str().expect("eos");
    let convs: Vec<Vec<Message>> =
        serde_json::from_value(fx["conversations"].clone()).expect("conversations");
    let cases = fx["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    for c in cases {
        let name = c["template"].as_str().expect("name");
        let src = fx["templates"][name].as_str().expect("template source");
        let t = ChatTemplate::new(src, bos, eos).expect("template compiles");
        let conv = &convs[c["conversation"].as_u64().expect("index") as usize];
        let add_gen = c["add_generation_prompt"].as_bool().expect("flag");
        let got = t.render(conv, add_gen).expect("renders");
        let want = c["expected"].as_str().expect("expected");
        if got != want {
            failures.push(format!(
                "{name} conv {} gen {add_gen}:\n--- jinja2\n{want:?}\n--- ours\n{got:?}",
                c["conversation"]
            ));
        }
    }
    assert!(cases.len() >= 24);
    assert!(
        failures.is_empty(),
        "{} of {} renders differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn template_errors_are_reported_not_panicked() {
    let fx = common_real::fixture("chat_templates.json");
    let src = fx["templates"]["header_style"].as_str().expect("template");
    let t = ChatTemplate::new(src, "<s>", "</s>").expect("compiles");
    let bad = [Message::new("user", "a"), Message::new("system", "late system")];
    let err = t.render(&bad, false).expect_err("system not first");
    assert!(err.to_string().contains("system must be first"), "{err}");
    assert!(ChatTemplate::new("{% for x in %}", "", "").is_err());
}
