//! Shared by the integration tests: the installed MiniLM, or a SKIPPED note (a failure under
//! FERROTUNE_REQUIRE_MODELS=1, and for a broken install everywhere).

use std::path::PathBuf;
use std::sync::Arc;

use ferrotune_rag::Embedder;

/// The installed embedder folder, or `None` (after printing why) when it is not installed.
#[allow(dead_code)]
pub fn model_dir() -> Option<PathBuf> {
    ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_EMBEDDER)
}

#[allow(dead_code)]
pub fn embedder() -> Option<Arc<Embedder>> {
    let dir = model_dir()?;
    Some(Arc::new(Embedder::load(&dir).expect("the installed MiniLM loads")))
}
