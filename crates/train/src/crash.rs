//! Test-only fault injection for the crash tests (`crates/cli/tests/train_crash.rs`): with
//! `FERROTUNE_TEST_CRASH_AT=POINT` (or `POINT:N`, the N-th time it is reached), the trainer stops
//! at that point of a write, says so on stderr and waits to be killed with SIGKILL — a real
//! `kill -9` at an exact place, with the run lock still held. Not for users: a process left
//! waiting aborts after two minutes.
//!
//! Points: `checkpoint-fill`, `best-fill`, `best-swap`, `adapter-fill`, `adapter-swap`
//! (`model-…` for full fine-tuning), `trainer_state`, `config`, `metrics-rewrite`, `loss.svg`,
//! `lineage`, `remove` (a pruned checkpoint renamed to `.step-N.del`, not yet deleted). `X-fill`: the new folder is complete in its temp sibling, nothing renamed;
//! `X-swap`: the old folder renamed aside, the new one not yet in; a file's point: its temp
//! written and fsync'ed, not yet renamed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const ENV: &str = "FERROTUNE_TEST_CRASH_AT";

/// What stderr says when a point is reached; the tests wait for it.
pub const REACHED: &str = "FERROTUNE_TEST_CRASH_AT reached";

/// The point and which time it is reached (1-based).
fn target() -> Option<&'static (String, usize)> {
    static AT: OnceLock<Option<(String, usize)>> = OnceLock::new();
    AT.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (name, n) = match v.rsplit_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().ok()?),
            None => (v, 1),
        };
        Some((name, n))
    })
    .as_ref()
}

pub(crate) fn point(name: &str) {
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Some((want, nth)) = target() else { return };
    if want != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *nth {
        return;
    }
    eprintln!("{REACHED}: `{name}` (pid {}); waiting for SIGKILL", std::process::id());
    std::thread::sleep(Duration::from_secs(120));
    std::process::abort();
}
