//! The tokenizer on arbitrary text and arbitrary token ids: the tiny test model's byte-level
//! BPE (built as a GGUF's vocabulary is) and, when installed, SmolLM2's real one (read from its
//! GGUF header under `$FERROTUNE_HOME/models`; nothing is downloaded). Byte-level BPE loses
//! nothing: decoding what was encoded gives the text back.
#![no_main]
#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use ferrotune_model::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizers() -> &'static Vec<Tokenizer> {
    static T: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = common::scratch().join("tiny");
        ferrotune_model::testing::write_tiny_model(&dir).expect("tiny model");
        let mut all = vec![ferrotune_model::loaded::load_text_path(&dir).expect("tiny tokenizer").tokenizer];
        match ferrotune_model::loaded::load_text("smollm2-135m-instruct") {
            Ok(m) => all.push(m.tokenizer),
            Err(e) => eprintln!("fuzzing the tiny tokenizer only (SmolLM2 is not installed: {e})"),
        }
        all
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = common::mode(data) else { return };
    let all = tokenizers();
    let tok = &all[mode as usize % all.len()];
    if mode & 0x80 == 0 {
        let text = String::from_utf8_lossy(rest);
        let ids = tok.encode(&text, mode & 0x40 != 0).expect("any text encodes");
        let skip_bos = usize::from(mode & 0x40 != 0 && tok.add_bos());
        let back = tok.decode(&ids[skip_bos..], false).expect("encoded ids decode");
        // Open finding 10 (reliability/fuzz.md): SmolLM2's tokenizer, built from its GGUF
        // vocabulary, loses characters next to U+FFFD in the round trip (a C0 control, a
        // 4-byte character seen). Until it is fixed, the exact round trip is checked on the tiny
        // tokenizer only; SmolLM2 must still encode and decode every text without failing.
        if mode as usize % all.len() == 0 {
            assert_eq!(back, text, "decode(encode(text)) is not the text");
        }
    } else {
        let ids: Vec<u32> =
            rest.chunks(2).map(|c| u32::from(c[0]) | u32::from(*c.get(1).unwrap_or(&0)) << 8).collect();
        let _ = tok.decode(&ids, mode & 0x40 != 0);
    }
});
