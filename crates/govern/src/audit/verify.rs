//! `AuditLog::verify`: recompute every leaf from the entry lines (archive segments included),
//! then check each stored checkpoint — signature, root at its size, consistency with the one
//! before — and a checkpoint the auditor kept. What catches what: `leaves.bin` is a cache an
//! attacker can rewrite too, so the evidence is the signed checkpoints (a changed, removed,
//! inserted or reordered entry changes the root of every checkpoint at or after it); comparing
//! with `leaves.bin` only names the entry when that file was left alone.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::audit::log::{AuditLog, Event, VerifyReport};
use crate::audit::merkle::{self, Hash};
use crate::audit::note::{Checkpoint, Verifier};
use crate::audit::store::{self, ARCHIVE, Snapshot};
use crate::audit::tree::Tree;
use crate::error::Result;

/// Past this many, the rest are counted, not listed.
const MAX_PROBLEMS: usize = 50;

pub(crate) fn b64(h: &Hash) -> String {
    base64::engine::general_purpose::STANDARD.encode(h)
}

impl AuditLog {
    /// Recompute the tree from the entries (archived segments included), check every stored
    /// checkpoint's signature and root, and consistency between successive checkpoints.
    /// `trusted`: a checkpoint (signed note) kept elsewhere that the log must extend.
    pub fn verify(&self, trusted: Option<&str>) -> Result<VerifyReport> {
        self.verify_with_key(trusted, None)
    }

    /// `verify` with a verifier key the auditor holds instead of the folder's `verifier.key`
    /// (which whoever holds the folder could replace along with `signing.key`).
    pub fn verify_with_key(&self, trusted: Option<&str>, vkey: Option<&str>) -> Result<VerifyReport> {
        let verifier = Verifier::parse(vkey.unwrap_or(&self.vkey))?;
        let snap = self.snapshot()?;
        let mut problems = Vec::new();
        if vkey.is_some_and(|k| k.trim() != self.vkey) {
            problems.push("verifier.key in the log folder is not the key given to verify with".to_string());
        }
        problems.extend(self.key_notes.iter().cloned());
        problems.extend(check_segments(&snap));
        let scanned = recompute(&snap);
        let (leaves, first_unlike_cache) = match scanned {
            Ok(s) => {
                problems.extend(s.unparsable);
                (s.leaves, s.unlike_cache)
            }
            Err(e) => {
                // Unreadable: nothing after this point can be checked.
                problems.push(format!("cannot read the entries: {e}"));
                return Ok(report(snap.size, snap.cps.len() as u64, String::new(), problems));
            }
        };
        if leaves.len() as u64 != snap.size {
            problems.push(format!(
                "the files hold {} entries, the log's size is {}",
                leaves.len(),
                snap.size
            ));
        }
        let tree = Tree::new(leaves);
        let cps = self.check_checkpoints(&snap, &verifier, &tree);
        if let Some((i, place)) = first_unlike_cache {
            let by = match cps.first_bad_after(i) {
                Some(s) => format!("leaves.bin / checkpoint {s} commit"),
                None => "leaves.bin commits".into(),
            };
            problems.push(format!("entry {i} ({place}) does not match the tree: {by} to a different value"));
        }
        problems.extend(cps.problems);
        if let Some(note) = trusted {
            problems.extend(self.check_trusted(note, &verifier, &tree));
        }
        let root = tree.root_at(tree.size()).map(|r| b64(&r)).unwrap_or_default();
        Ok(report(snap.size, snap.cps.len() as u64, root, problems))
    }

    /// Every stored checkpoint in size order: signature, size, root, consistency with the
    /// previous one whose signature held.
    fn check_checkpoints(&self, snap: &Snapshot, verifier: &Verifier, tree: &Tree) -> Checked {
        let mut out = Checked::default();
        let mut prev: Option<Checkpoint> = None;
        let mut last_good: Option<u64> = None;
        for &size in &snap.cps {
            let path = store::note_path(&snap.dir, size);
            let cp = match store::read_note(&snap.dir, size).and_then(|n| verifier.verify(&n)) {
                Ok(cp) => cp,
                Err(e) => {
                    out.problems.push(format!(
                        "checkpoint {size}: bad signature or not a checkpoint ({}): {e}",
                        path.display()
                    ));
                    out.bad.push(size);
                    continue;
                }
            };
            if cp.size != size || cp.origin != self.origin {
                out.problems.push(format!(
                    "checkpoint {size}: {} holds a checkpoint of size {} for origin {:?} (this log: {:?})",
                    path.display(),
                    cp.size,
                    cp.origin,
                    self.origin
                ));
                out.bad.push(size);
                continue;
            }
            match tree.root_at(size) {
                None => {
                    out.problems.push(format!(
                        "checkpoint {size} is larger than the log ({}): entries were removed",
                        tree.size()
                    ));
                    out.bad.push(size);
                }
                Some(root) if root != cp.root => {
                    let since = last_good.map(|g| {
                        format!(" (checkpoint {g} still matches: the change is in entries {g}..{})", size - 1)
                    });
                    out.problems.push(format!(
                        "checkpoint {size}: root differs from the entries{}",
                        since.unwrap_or_default()
                    ));
                    out.bad.push(size);
                }
                Some(_) => last_good = Some(size),
            }
            if let Some(p) = &prev {
                let proof = tree.consistency(p.size, size).unwrap_or_default();
                if !merkle::verify_consistency(p.size, size, &p.root, &cp.root, &proof) {
                    out.problems.push(format!(
                        "checkpoint {size} is not consistent with checkpoint {} (a fork or a rewritten history)",
                        p.size
                    ));
                }
            }
            prev = Some(cp);
        }
        out
    }

    fn check_trusted(&self, note: &str, verifier: &Verifier, tree: &Tree) -> Option<String> {
        let cp = match verifier.verify(note) {
            Ok(cp) => cp,
            Err(e) => {
                return Some(format!(
                    "the trusted checkpoint does not verify with the log's verifier key: {e}"
                ));
            }
        };
        if cp.origin != self.origin {
            return Some(format!(
                "the trusted checkpoint is for origin {:?}, this log is {:?}",
                cp.origin, self.origin
            ));
        }
        match tree.root_at(cp.size) {
            None => Some(format!(
                "the trusted checkpoint (size {}) is larger than the log ({}): entries were removed",
                cp.size,
                tree.size()
            )),
            Some(root) if root != cp.root => Some(format!(
                "the trusted checkpoint (size {}) is not consistent with the log: the entries' root at that size differs \
                 (a fork or a rewritten history)",
                cp.size
            )),
            Some(_) => None,
        }
    }
}

fn report(entries: u64, checkpoints: u64, root: String, mut problems: Vec<String>) -> VerifyReport {
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("… and {more} more"));
    }
    VerifyReport { entries, checkpoints, root, ok: problems.is_empty(), problems }
}

#[derive(Default)]
struct Checked {
    problems: Vec<String>,
    /// Sizes of the checkpoints that failed, ascending.
    bad: Vec<u64>,
}

impl Checked {
    /// The first failing checkpoint that covers entry `i`.
    fn first_bad_after(&self, i: u64) -> Option<u64> {
        self.bad.iter().copied().find(|&s| s > i)
    }
}

/// Each segment's SHA-256 against the manifest.
fn check_segments(snap: &Snapshot) -> Vec<String> {
    let mut problems = Vec::new();
    for seg in &snap.manifest.segments {
        let path = snap.dir.join(ARCHIVE).join(&seg.file);
        match std::fs::read(&path) {
            Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == seg.sha256 => {}
            Ok(_) => problems.push(format!(
                "{}: its SHA-256 differs from the one in {} (entries {}..={} were changed)",
                path.display(),
                store::MANIFEST,
                seg.first,
                seg.last
            )),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    problems
}

struct Scanned {
    leaves: Vec<Hash>,
    /// The first entry whose leaf differs from `leaves.bin`, and where it is.
    unlike_cache: Option<(u64, String)>,
    unparsable: Vec<String>,
}

/// One pass over the lines: parse each (the first few failures reported), hash it, compare
/// with `leaves.bin`.
fn recompute(snap: &Snapshot) -> Result<Scanned> {
    let cached = store::read_leaves(&snap.dir, snap.size)?;
    let mut s = Scanned {
        leaves: Vec::with_capacity(snap.size as usize),
        unlike_cache: None,
        unparsable: Vec::new(),
    };
    store::scan(snap, 0, &mut |i, at, line| {
        if s.unparsable.len() < 10
            && let Err(e) = serde_json::from_slice::<Event>(line)
        {
            s.unparsable
                .push(format!("entry {i} (line {} of {}) is not a valid entry: {e}", at.line, at.name));
        }
        let h = merkle::leaf_hash(line);
        if s.unlike_cache.is_none() && cached.get(i as usize) != Some(&h) {
            s.unlike_cache = Some((i, format!("line {} of {}", at.line, at.name)));
        }
        s.leaves.push(h);
        Ok(true)
    })?;
    Ok(s)
}
