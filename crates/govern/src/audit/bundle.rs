//! What leaves the log for an auditor (formats in `mod.rs`): the inclusion bundle, the
//! consistency bundle and the export folder. Every proof is checked here with `merkle::verify_*`
//! against the signed checkpoint before it is handed out, so a log whose `leaves.bin` disagrees
//! with its checkpoints refuses instead of producing proofs that fail elsewhere.

use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::audit::log::{AuditLog, Filter};
use crate::audit::merkle::{self, Hash};
use crate::audit::note::{Checkpoint, Verifier};
use crate::audit::store::{self, Snapshot};
use crate::audit::tree::Tree;
use crate::audit::verify::b64;
use crate::error::{GovernError, Result};

pub const PROOF_FORMAT: &str = "ferrotune-tlog-proof/v1";
pub const CONSISTENCY_FORMAT: &str = "ferrotune-tlog-consistency/v1";

fn hashes(hs: &[Hash]) -> Value {
    hs.iter().map(|h| Value::String(b64(h))).collect()
}

fn refused_tree(dir: &Path, cp: &Checkpoint) -> GovernError {
    GovernError::Refused(format!(
        "{}: leaves.bin does not give the root of checkpoint {} — the log was changed; run `ferrotune audit verify`",
        dir.display(),
        cp.size
    ))
}

impl AuditLog {
    /// The tree of `cp`'s size from `leaves.bin`, checked against `cp`'s root.
    fn tree_for(&self, cp: &Checkpoint) -> Result<Tree> {
        let tree = Tree::new(store::read_leaves(&self.dir, cp.size)?);
        if tree.size() != cp.size || tree.root_at(cp.size) != Some(cp.root) {
            return Err(refused_tree(&self.dir, cp));
        }
        Ok(tree)
    }

    /// Entry `index`'s line (without `\n`).
    fn entry_line(&self, snap: &Snapshot, index: u64) -> Result<Vec<u8>> {
        let mut found = None;
        store::scan(snap, index, &mut |_, _, line| {
            found = Some(line.to_vec());
            Ok(false)
        })?;
        found.ok_or_else(|| {
            GovernError::NotFound(format!("audit entry {index}: the log has {} entries", snap.size))
        })
    }

    /// The offline inclusion bundle of entry `index` against the latest checkpoint (format in mod.rs).
    pub fn prove(&self, index: u64) -> Result<Value> {
        let snap = self.snapshot()?;
        if index >= snap.size {
            return Err(GovernError::NotFound(format!(
                "audit entry {index}: the log has {} entries",
                snap.size
            )));
        }
        let (cp, note) = self.covering_checkpoint(index + 1)?;
        let tree = self.tree_for(&cp)?;
        let line = self.entry_line(&snap, index)?;
        let leaf = merkle::leaf_hash(&line);
        let proof = tree.inclusion(index, cp.size).unwrap_or_default();
        if !merkle::verify_inclusion(&leaf, index, cp.size, &proof, &cp.root) {
            return Err(GovernError::Refused(format!(
                "audit entry {index} does not match the tree its checkpoints commit to (it was changed); run `ferrotune audit verify`"
            )));
        }
        let entry = String::from_utf8(line)
            .map_err(|_| GovernError::Refused(format!("audit entry {index} is not UTF-8")))?;
        Ok(json!({
            "format": PROOF_FORMAT,
            "origin": self.origin,
            "index": index,
            "size": cp.size,
            "entry": entry,
            "leaf_hash": b64(&leaf),
            "inclusion": hashes(&proof),
            "checkpoint": note,
            "verifier_key": self.vkey,
        }))
    }

    /// Consistency bundle between two sizes (`new` default: the latest checkpoint's size).
    pub fn consistency(&self, old: u64, new: Option<u64>) -> Result<Value> {
        let new = match new {
            Some(n) => n,
            None => self.covering_checkpoint(old.max(1))?.0.size,
        };
        let size = self.size()?;
        if old == 0 || old > new || new > size {
            return Err(GovernError::Invalid {
                field: "size",
                reason: format!(
                    "a consistency proof needs 1 <= old ({old}) <= new ({new}) <= the log's size ({size})"
                ),
            });
        }
        let tree = Tree::new(store::read_leaves(&self.dir, new)?);
        let (old_root, new_root) = match (tree.root_at(old), tree.root_at(new)) {
            (Some(o), Some(n)) => (o, n),
            _ => {
                return Err(GovernError::Refused(format!(
                    "{}: leaves.bin is shorter than {new} leaves",
                    self.dir.display()
                )));
            }
        };
        let verifier = Verifier::parse(&self.vkey)?;
        let stored = |size: u64, root: &Hash| -> Result<Value> {
            if !store::checkpoint_sizes(&self.dir)?.contains(&size) {
                return Ok(Value::Null);
            }
            let note = store::read_note(&self.dir, size)?;
            let cp = verifier.verify(&note)?;
            if cp.root != *root {
                return Err(refused_tree(&self.dir, &cp));
            }
            Ok(Value::String(note))
        };
        let old_checkpoint = stored(old, &old_root)?;
        let new_checkpoint = stored(new, &new_root)?;
        let proof = tree.consistency(old, new).unwrap_or_default();
        if !merkle::verify_consistency(old, new, &old_root, &new_root, &proof) {
            return Err(GovernError::Refused(format!(
                "consistency proof {old} → {new} does not verify (a bug)"
            )));
        }
        Ok(json!({
            "format": CONSISTENCY_FORMAT,
            "origin": self.origin,
            "old_size": old,
            "new_size": new,
            "old_root": b64(&old_root),
            "new_root": b64(&new_root),
            "proof": hashes(&proof),
            "old_checkpoint": old_checkpoint,
            "new_checkpoint": new_checkpoint,
            "verifier_key": self.vkey,
        }))
    }

    /// Write an auditor's bundle to `out` (format in mod.rs); returns how many entries.
    ///
    /// The filter picks the first and the last entry; everything between them goes in too (a
    /// contiguous range is what `range.json` and the proofs describe), and README.txt says so.
    pub fn export(&self, f: &Filter, out: &Path) -> Result<u64> {
        if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
            return Err(GovernError::Refused(format!(
                "{}: not empty; export writes into a new or empty folder",
                out.display()
            )));
        }
        let snap = self.snapshot()?;
        let (mut first, mut last, mut matched) = (None, 0, 0usize);
        store::scan(&snap, 0, &mut |i, at, line| {
            let hit = match f.quick(line) {
                Some(q) => q,
                None => f.matches(
                    &serde_json::from_slice(line).map_err(|e| at.bad(format!("not a JSON entry: {e}")))?,
                ),
            };
            if hit {
                first.get_or_insert(i);
                last = i;
                matched += 1;
            }
            Ok(f.limit.is_none_or(|l| matched < l))
        })?;
        let Some(first) = first else {
            return Err(GovernError::NotFound("no audit entries match the filter".into()));
        };
        let (cp, note) = self.covering_checkpoint(last + 1)?;
        let tree = self.tree_for(&cp)?;
        std::fs::create_dir_all(out.join("checkpoints")).map_err(store::io(out))?;
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let p = out.join(name);
            std::fs::write(&p, bytes).map_err(store::io(&p))
        };

        let (mut lines, mut inclusion) = (Vec::new(), Vec::new());
        store::scan(&snap, first, &mut |i, _, line| {
            lines.extend_from_slice(line);
            lines.push(b'\n');
            let leaf = tree.leaf(i).copied().unwrap_or_default();
            let proof = tree.inclusion(i, cp.size).unwrap_or_default();
            let row = json!({"index": i, "leaf_hash": b64(&leaf), "inclusion": hashes(&proof)});
            let _ = writeln!(inclusion, "{row}");
            Ok(i < last)
        })?;
        write("entries.log", &lines)?;
        write("inclusion.jsonl", &inclusion)?;
        let count = last - first + 1;
        let range = json!({"first": first, "last": last, "count": count, "origin": self.origin});
        write("range.json", format!("{range:#}\n").as_bytes())?;
        write("checkpoint.note", note.as_bytes())?;
        write("verifier.key", format!("{}\n", self.vkey).as_bytes())?;

        let sizes: Vec<u64> =
            store::checkpoint_sizes(&self.dir)?.into_iter().filter(|&s| s <= cp.size).collect();
        let mut consistency = Vec::new();
        for (i, &s) in sizes.iter().enumerate() {
            let text = store::read_note(&self.dir, s)?;
            write(&format!("checkpoints/{s:012}.note"), text.as_bytes())?;
            if let Some(&prev) = i.checked_sub(1).and_then(|p| sizes.get(p)) {
                let proof = tree.consistency(prev, s).unwrap_or_default();
                let _ = writeln!(
                    consistency,
                    "{}",
                    json!({"old_size": prev, "new_size": s, "proof": hashes(&proof)})
                );
            }
        }
        write("consistency.jsonl", &consistency)?;
        write("README.txt", readme(&self.origin, first, last, count, matched as u64, &cp).as_bytes())?;
        Ok(count)
    }
}

fn readme(origin: &str, first: u64, last: u64, count: u64, matched: u64, cp: &Checkpoint) -> String {
    let range = if matched == count {
        format!("All {count} entries in the range matched the filter.")
    } else {
        format!(
            "{matched} of these {count} entries matched the filter; the entries between them are included too, so the\n\
             range is contiguous and every entry in it can be checked."
        )
    };
    format!(
        "ferrotune audit log export\n\
         ==========================\n\n\
         Log origin: {origin}\n\
         Entries {first}..={last} ({count} entries), proven against the signed checkpoint of size {}.\n\
         {range}\n\n\
         Files (formats: crates/govern/src/audit/mod.rs in the ferrotune repository)\n\
         - entries.log        the entries, one canonical JSON line each, in index order\n\
         - range.json         first / last index (inclusive), count, origin\n\
         - checkpoint.note    the signed checkpoint (C2SP signed note) the proofs are against\n\
         - inclusion.jsonl    per entry: index, leaf hash, RFC 9162 inclusion proof\n\
         - checkpoints/       every checkpoint the log had signed up to then\n\
         - consistency.jsonl  RFC 9162 consistency proofs between successive checkpoints\n\
         - verifier.key       the log's verifier key (C2SP note verifier key)\n\n\
         How to check it (Python 3 with the `cryptography` package; scripts/audit/verify.sh makes a\n\
         virtualenv with it):\n\n\
         \x20   python3 scripts/audit/verify.py bundle THIS_FOLDER --key 'VERIFIER_KEY'\n\n\
         Use the verifier key you obtained from the log's operator out of band; checking with\n\
         --key-file THIS_FOLDER/verifier.key only shows the folder is consistent with itself.\n\
         Keep checkpoint.note: a later export whose checkpoints are not consistent with it means\n\
         the log was rewritten.\n",
        cp.size
    )
}
