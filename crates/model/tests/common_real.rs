//! Shared by the tests that need the real default model: they run when it is installed in
//! `$FERROTUNE_HOME` (CI installs it) and say so when skipped.

use std::path::PathBuf;

pub fn default_model_path() -> Option<PathBuf> {
    let store = ferrotune_model::store::Store::open(&ferrotune_model::store::home());
    match store.path_of(ferrotune_model::store::DEFAULT_MODEL) {
        Ok(Some(p)) => Some(p),
        _ => {
            eprintln!(
                "SKIPPED: {} is not installed in {} (run `ferrotune models pull`)",
                ferrotune_model::store::DEFAULT_MODEL,
                ferrotune_model::store::home().display()
            );
            None
        }
    }
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
