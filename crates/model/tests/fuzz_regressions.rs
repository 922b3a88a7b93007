//! Inputs the fuzzers (`fuzz/`, `scripts/reliability/fuzz.sh`) found that crashed a loader, kept
//! as files under `tests/fixtures/fuzz/`: each must now be a clear error.

use std::path::{Path, PathBuf};

use candle_core::Device;
use ferrotune_model::{Tokenizer, WeightMode, loaded};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(name)
}

/// A GGUF tensor whose dimensions multiply past `usize`: candle's element count overflowed (a
/// panic in a checked build, a wrong size otherwise).
#[test]
fn a_gguf_tensor_whose_size_overflows_is_an_error() {
    let Err(err) =
        loaded::load_path(&fixture("gguf-dims-overflow.gguf"), WeightMode::Quantized, &Device::Cpu)
    else {
        panic!("must fail")
    };
    let err = err.to_string();
    assert!(err.contains("its size overflows"), "{err}");
}

/// A `tokenizer.json` whose `decoder` object is not valid JSON: tokenizers' reader panicked
/// (`expect("Helper")`) instead of returning its error.
#[test]
fn a_tokenizer_json_broken_inside_its_decoder_is_an_error() {
    let err =
        Tokenizer::from_file(&fixture("tokenizer-bad-decoder.json")).expect_err("must fail").to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

/// A GGUF tensor with a zero dimension: candle viewed its empty buffer (dangling, 1-aligned) as
/// a slice of f32 or blocks, an unaligned slice (undefined behaviour; a panic in a checked build).
#[test]
fn an_empty_gguf_tensor_is_an_error() {
    let Err(err) = loaded::load_path(&fixture("gguf-empty-tensor.gguf"), WeightMode::Quantized, &Device::Cpu)
    else {
        panic!("must fail")
    };
    let err = err.to_string();
    assert!(err.contains("it is empty"), "{err}");
}

/// A GGUF whose `llama.block_count` claims 268 million layers over the weights of one: the
/// loader reserved room for every layer before reading any (122 GB, an abort).
#[test]
fn a_gguf_claiming_more_layers_than_it_holds_is_an_error() {
    let Err(err) = loaded::load_path(&fixture("gguf-layer-count.gguf"), WeightMode::Quantized, &Device::Cpu)
    else {
        panic!("must fail")
    };
    let err = err.to_string();
    assert!(err.contains("model.layers."), "{err}");
}
