//! The audit log: an append-only transparency log in the style of Certificate Transparency and
//! Sigstore Rekor, so an auditor can check, without trusting whoever holds the files, that no
//! recorded event was changed, removed, inserted or reordered.
//!
//! - `merkle`: RFC 6962 / RFC 9162 §2.1 tree hashes, inclusion and consistency proofs.
//! - `note`: C2SP signed notes and `tlog-checkpoint`s with Ed25519; the signing key.
//! - `log`: the files in `$FERROTUNE_HOME/audit/`, appends under a file lock, verification,
//!   proofs, search, export, retention.
//!
//! ## Exchange formats (what `scripts/audit/verify.py` reads; hashes are standard base64)
//! - **Entry**: canonical JSON of [`log::Event`] (keys sorted at every level, no whitespace, no
//!   floats), one line; leaf hash = `SHA-256(0x00 ‖ entry bytes)` (the line without its `\n`).
//! - **Checkpoint**: a C2SP signed note: `<origin>\n<size>\n<base64 root>\n\n— <name> <base64 sig>\n`.
//! - **Verifier key**: `<name>+<8 hex key id>+<base64(0x01 ‖ Ed25519 public key)>`.
//! - **Inclusion bundle** (`audit prove N`, JSON): `{"format": "ferrotune-tlog-proof/v1",
//!   "origin", "index", "size", "entry": <entry as a JSON string>, "leaf_hash", "inclusion":
//!   [hashes], "checkpoint": <signed note of tree size `size`>, "verifier_key"}`.
//! - **Consistency bundle** (`audit consistency OLD [NEW]`, JSON): `{"format":
//!   "ferrotune-tlog-consistency/v1", "origin", "old_size", "new_size", "old_root", "new_root",
//!   "proof": [hashes], "old_checkpoint": <note or null>, "new_checkpoint": <note or null>,
//!   "verifier_key"}`.
//! - **Export folder** (`audit export --out DIR`): `entries.log` (the selected entries' lines, in
//!   index order), `range.json` `{"first", "last", "count", "origin"}` (indexes inclusive;
//!   count = last − first + 1), `checkpoint.note` (the latest signed checkpoint, size > last),
//!   `inclusion.jsonl` (per entry `{"index", "leaf_hash", "inclusion": [hashes]}` against
//!   checkpoint.note's size), `checkpoints/<size>.note` (every stored checkpoint, size padded to
//!   12 digits) and `consistency.jsonl` (for each pair of successive stored checkpoints
//!   `{"old_size", "new_size", "proof": [hashes]}`), `verifier.key`, `README.txt` (how to check it).

mod archive;
mod bundle;
pub mod log;
pub mod merkle;
pub mod note;
mod store;
mod tree;
mod verify;

pub use log::{Appended, AuditConfig, AuditLog, Event, Filter, VerifyReport, default_dir};
