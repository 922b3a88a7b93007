//! A GGUF file from arbitrary bytes through the loaders the CLI and the server use: the header
//! alone (`load_config`), the header's tokenizer and chat template (`load_text_path`, the data
//! stage) and the whole model (`load_path`, serving with quantized weights).
#![no_main]
#[path = "common.rs"]
mod common;

use candle_core::Device;
use ferrotune_model::{WeightMode, loaded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::write("model.gguf", data);
    let config = ferrotune_model::gguf::read_config(&path);
    let text = loaded::load_text_path(&path);
    if let Ok(text) = &text {
        // A tokenizer that was built must take any text.
        let _ = text.tokenizer.encode("Hello <|im_start|> world", true);
    }
    match loaded::load_path(&path, WeightMode::Quantized, &Device::Cpu) {
        Ok(model) => {
            // The whole load reads the same header as the header-only one.
            let config = config.expect("load_path succeeded where read_config failed");
            assert_eq!(&config, model.config(), "read_config and load_path disagree");
            assert!(text.is_ok(), "load_path succeeded where load_text_path failed");
        }
        Err(_) => {}
    }
});
