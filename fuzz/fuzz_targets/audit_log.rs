//! The audit log's files read back from disk, by the first byte: a log folder (5 entries, signed
//! checkpoints) with one file replaced by arbitrary bytes or patched in place, opened, verified,
//! listed and proved; a checkpoint body (a parsed checkpoint prints and parses again equal); a
//! verifier key; a signed note checked with the log's key.
#![no_main]
#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrotune_govern::audit::note::{Checkpoint, Verifier};
use ferrotune_govern::audit::{AuditConfig, AuditLog, Event, Filter};
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 6] =
    ["entries.log", "leaves.bin", "manifest.json", "origin", "verifier.key", "signing.key"];

fn config() -> AuditConfig {
    AuditConfig {
        origin: Some("fuzz.example/audit".into()),
        checkpoint_every_entries: 2,
        ..AuditConfig::default()
    }
}

/// A log written by the real appender, once; each input starts from a copy.
fn template() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch().join("audit-template");
        let log = AuditLog::open(&dir, &config()).expect("log");
        for i in 0..5 {
            let e = Event::new(
                "alice",
                "registry.promote",
                serde_json::json!({"name": "demo", "version": i}),
                "ok",
                serde_json::json!({"note": "fuzz seed", "n": i}),
            );
            log.append(&[e]).expect("append");
        }
        log.checkpoint().expect("checkpoint");
        dir
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("folder");
    for entry in std::fs::read_dir(from).expect("read").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            // Read and write, not `fs::copy`: libFuzzer's timer signal interrupts its
            // `copy_file_range`, which std does not retry (as in the lora target).
            let bytes = std::fs::read(entry.path()).expect("read a template file");
            std::fs::write(&target, bytes).expect("copy a template file");
        }
    }
}

/// A note file of the template (the first checkpoint), for the mode that replaces one.
fn first_note(dir: &Path) -> Option<PathBuf> {
    let mut notes: Vec<PathBuf> =
        std::fs::read_dir(dir.join("checkpoints")).ok()?.flatten().map(|e| e.path()).collect();
    notes.sort();
    notes.into_iter().next()
}

fn open_and_check(bytes: &[u8], mode: u8) {
    let dir = common::scratch().join("audit");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(template(), &dir);
    let m = mode as usize % (FILES.len() + 2);
    if m < FILES.len() {
        std::fs::write(dir.join(FILES[m]), bytes).expect("write");
    } else if m == FILES.len() {
        let Some(note) = first_note(&dir) else { return };
        std::fs::write(note, bytes).expect("write");
    } else {
        // Patch entries.log in place: two bytes of offset, then the new bytes.
        let path = dir.join("entries.log");
        let mut log = std::fs::read(&path).expect("read");
        let (Some(&a), Some(&b)) = (bytes.first(), bytes.get(1)) else { return };
        let at = (usize::from(a) | usize::from(b) << 8) % log.len().max(1);
        for (i, &x) in bytes[2..].iter().enumerate() {
            if let Some(slot) = log.get_mut(at + i) {
                *slot = x;
            }
        }
        std::fs::write(&path, log).expect("write");
    }
    let Ok(log) = AuditLog::open(&dir, &config()) else { return };
    let report = log.verify(None);
    let entries = log.entries(&Filter::default(), false);
    let size = log.size();
    if let (Ok(report), Ok(entries), Ok(size)) = (&report, &entries, &size)
        && report.ok
    {
        assert_eq!(report.entries, *size, "a verified log's entry count is not its size");
        assert_eq!(entries.len() as u64, *size, "a verified log lists a different number of entries");
    }
    if let Ok(size) = size {
        for i in [0, size.saturating_sub(1)] {
            let _ = log.prove(i);
        }
        let _ = log.consistency(1, None);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = common::mode(data) else { return };
    match mode % 4 {
        0 | 1 => open_and_check(bytes, mode >> 2),
        2 => {
            let text = String::from_utf8_lossy(bytes);
            if let Ok(cp) = Checkpoint::parse(&text) {
                let again = Checkpoint::parse(&cp.body()).expect("a parsed checkpoint's body parses");
                assert_eq!(cp, again, "checkpoint changed through print and parse");
            }
        }
        _ => {
            let text = String::from_utf8_lossy(bytes);
            let _ = Verifier::parse(text.trim_end());
            // A note checked with the template log's real key.
            let key = std::fs::read_to_string(template().join("verifier.key")).expect("verifier key");
            let v = Verifier::parse(key.trim()).expect("the log's verifier key parses");
            let _ = v.verify(&text);
        }
    }
});
