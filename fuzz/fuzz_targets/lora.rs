//! A PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`) with one file of
//! arbitrary bytes, loaded onto the tiny model as serving and `merge` load it. An adapter that
//! loads must save and load again to the same spec.
#![no_main]
#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use candle_core::Device;
use ferrotune_model::{Adapter, Family, Llama, LoraSpec, ModelConfig, TargetModules, WeightMode};
use libfuzzer_sys::fuzz_target;

struct Setup {
    model: Mutex<Llama>,
    /// A valid adapter for the model: the file not under test comes from it.
    adapter: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let cfg = ModelConfig::tiny(Family::Llama);
        let w = ferrotune_model::testing::random_weights(&cfg, &Device::Cpu).expect("weights");
        let mut model = Llama::load(&w, &cfg, WeightMode::F32, None).expect("tiny model");
        let spec =
            LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, targets: TargetModules::AllLinear, use_rslora: false };
        let adapter = common::scratch().join("valid-adapter");
        Adapter::init(&mut model, &spec, 1).expect("init").save(&adapter, "tiny").expect("save");
        Setup { model: Mutex::new(model), adapter }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = common::mode(data) else { return };
    let s = setup();
    let dir = common::fresh_dir("adapter");
    let (fuzzed, kept) = if mode % 2 == 0 {
        ("adapter_config.json", "adapter_model.safetensors")
    } else {
        ("adapter_model.safetensors", "adapter_config.json")
    };
    std::fs::write(dir.join(fuzzed), bytes).expect("write");
    // Read and write, not `fs::copy`: libFuzzer's once-a-second timer signal interrupted its
    // `copy_file_range`, which std does not retry; `read` and `write` retry on EINTR.
    let kept_bytes = std::fs::read(s.adapter.join(kept)).expect("read the kept file");
    std::fs::write(dir.join(kept), kept_bytes).expect("copy the kept file");
    let mut model = s.model.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(adapter) = Adapter::load(&dir, &mut model) {
        let again = common::fresh_dir("adapter-again");
        adapter.save(&again, "tiny").expect("a loaded adapter saves");
        let back = Adapter::load(&again, &mut model).expect("a saved adapter loads");
        assert_eq!(format!("{:?}", adapter.spec), format!("{:?}", back.spec));
        assert_eq!(adapter.layers.keys().collect::<Vec<_>>(), back.layers.keys().collect::<Vec<_>>());
    }
});
