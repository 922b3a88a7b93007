//! `loaded::load_config` reads a model's configuration without its weights: the same
//! configuration a full load gives, for the installed GGUF and for an HF directory.

use candle_core::Device;
use ferrotune_model::store::DEFAULT_MODEL;
use ferrotune_model::{WeightMode, loaded, testing};

#[test]
fn the_header_gives_the_loaded_models_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = dir.path().join("tiny");
    testing::write_tiny_model(&tiny).expect("tiny model");
    let spec = tiny.display().to_string();
    let full = loaded::load(&spec, WeightMode::F32, &Device::Cpu).expect("load");
    assert_eq!(&loaded::load_config(&spec).expect("config"), full.config());
    let Some(gguf) = testing::installed_model(DEFAULT_MODEL) else { return };
    let spec = gguf.display().to_string();
    let full = loaded::load(&spec, WeightMode::Quantized, &Device::Cpu).expect("load");
    let cfg = loaded::load_config(&spec).expect("config");
    assert_eq!(&cfg, full.config());
    assert_eq!(cfg.parameter_count(), 134_515_008);
}

#[test]
fn a_missing_or_broken_model_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF but not really").expect("write");
    let e = loaded::load_config(&bad.display().to_string()).expect_err("a broken file").to_string();
    assert!(e.contains("bad.gguf"), "{e}");
    let e = loaded::load_config("/nonexistent/model.gguf").expect_err("a missing file").to_string();
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
}
