//! An HF model folder with one file replaced by arbitrary bytes — the safetensors header and
//! data, `config.json`, `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`,
//! `model.safetensors.index.json` — through `load_path` (what serving and training load) and
//! `load_text_path` (the data stage).
#![no_main]
#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use ferrotune_model::{WeightMode, loaded};
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 6] = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors.index.json",
];

/// The tiny test model, written once: the files not under test come from it.
fn tiny() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch().join("tiny");
        ferrotune_model::testing::write_tiny_model(&dir).expect("tiny model");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = common::mode(data) else { return };
    let replaced = FILES[mode as usize % FILES.len()];
    let dir = common::fresh_dir("model");
    for entry in std::fs::read_dir(tiny()).expect("tiny model folder").flatten() {
        let name = entry.file_name();
        if name != replaced {
            std::fs::hard_link(entry.path(), dir.join(&name)).expect("link");
        }
    }
    std::fs::write(dir.join(replaced), bytes).expect("write");
    let text = loaded::load_text_path(&dir);
    if let Ok(model) = loaded::load_path(&dir, WeightMode::F32, &Device::Cpu) {
        let text = text.expect("load_path succeeded where load_text_path failed");
        assert_eq!(text.eos_ids, model.eos_ids, "the two loaders disagree on EOS ids");
        let config =
            loaded::load_config(dir.to_str().expect("utf-8 path")).expect("config of a loaded model");
        assert_eq!(&config, model.config(), "load_config and load_path disagree");
    }
});
