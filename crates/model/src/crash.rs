//! Test-only fault injection, shared by every crate that writes state (training's run folder,
//! `data prepare`'s outputs, a knowledge base, the key database): with
//! `FERROTUNE_TEST_CRASH_AT=POINT` (or `POINT:N`, the N-th time it is reached) the process stops
//! at that point of a write, says so on stderr ([`REACHED`]) and waits to be killed with
//! SIGKILL — a real `kill -9` at an exact place, with every lock still held. The crash tests
//! (`crates/cli/tests/train_crash.rs`, `crash_matrix.rs`) set it; users never should: a process
//! left waiting aborts after two minutes. Unset, [`point`] is one cached lookup.
//!
//! It lives here because every crate depends on this one; the points are named where they are
//! (`crates/train/src/crash.rs` lists the trainer's, `data::prepare`, `rag::writer` and
//! `serve::keys` theirs).

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

/// Stop here if [`ENV`] names this point (and this is the N-th time it is reached).
pub fn point(name: &str) {
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let Some((want, nth)) = target() else { return };
    if want != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *nth {
        return;
    }
    eprintln!("{REACHED}: `{name}` (pid {}); waiting for SIGKILL", std::process::id());
    std::thread::sleep(Duration::from_secs(120));
    std::process::abort();
}
