//! The record an auditor asks for. `Registry` (SQLite in `$FERROTUNE_HOME/registry.db`) holds
//! every base model, dataset, run, artifact (adapter / full model, versioned by name),
//! evaluation and release (aliases such as `champion`, moved by approval-gated promotion, with
//! full history), and the kill switch (disabled versions are neither served nor promoted).
//! `policy` reads the release rules; `card` writes a model card from a version's lineage.

pub mod audit;
pub mod card;
mod db;
pub mod error;
mod gate;
mod import;
pub mod policy;
mod process;
mod query;
mod recording;
pub mod records;
pub mod registry;
mod release;
pub mod render;

pub use db::{hash_file, hash_folder, sha256_hex};
pub use error::{GovernError, Result};
pub use policy::{AliasRule, Gate, Policy};
pub use records::*;
pub use registry::{Promotion, Reference, Registry, Selector, actor, default_path};
