//! The trainer's fault-injection points for the crash tests (`crates/cli/tests/train_crash.rs`):
//! the mechanism (`FERROTUNE_TEST_CRASH_AT=POINT[:N]`, stop and wait for SIGKILL) is
//! [`ferrotune_model::crash`], shared with the other crates that write state.
//!
//! Points: `checkpoint-fill`, `best-fill`, `best-swap`, `adapter-fill`, `adapter-swap`
//! (`model-…` for full fine-tuning), `trainer_state`, `config`, `metrics-rewrite`, `loss.svg`,
//! `lineage`, `remove` (a pruned checkpoint renamed to `.step-N.del`, not yet deleted). `X-fill`: the new folder is complete in its temp sibling, nothing renamed;
//! `X-swap`: the old folder renamed aside, the new one not yet in; a file's point: its temp
//! written and fsync'ed, not yet renamed.

pub use ferrotune_model::crash::{ENV, REACHED};

pub(crate) use ferrotune_model::crash::point;
