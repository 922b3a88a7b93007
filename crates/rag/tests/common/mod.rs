//! Shared by the integration tests: the installed MiniLM, or a SKIPPED note.

use std::path::PathBuf;
use std::sync::Arc;

use ferrotune_rag::Embedder;

/// The installed embedder folder, or `None` (after printing why) when it is not installed.
#[allow(dead_code)]
pub fn model_dir() -> Option<PathBuf> {
    let home = ferrotune_model::store::home();
    if !home.join("models").join(ferrotune_model::store::DEFAULT_EMBEDDER).exists() {
        eprintln!("SKIPPED: model not installed ({}/models/all-minilm-l6-v2 is absent)", home.display());
        return None;
    }
    match ferrotune_model::store::resolve(ferrotune_model::store::DEFAULT_EMBEDDER) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("SKIPPED: model not installed ({e})");
            None
        }
    }
}

#[allow(dead_code)]
pub fn embedder() -> Option<Arc<Embedder>> {
    let dir = model_dir()?;
    Some(Arc::new(Embedder::load(&dir).expect("the installed MiniLM loads")))
}
