//! C2SP `signed-note` + `tlog-checkpoint` with Ed25519 (c2sp.org/signed-note,
//! c2sp.org/tlog-checkpoint): the checkpoint body is `<origin>\n<size>\n<base64 root>\n`, then a
//! blank line, then `— <key name> <base64(4-byte key id ‖ 64-byte signature)>\n`. Key id = the
//! first 4 bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key); verifier key text
//! `<name>+<8 hex digits of key id>+<base64(0x01 ‖ public key)>`.
//! API SKELETON — bodies being written; signatures are the contract.

use std::path::Path;

use crate::audit::merkle::Hash;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body (three lines, each ending in `\n`).
    pub fn body(&self) -> String { todo!("{self:?}") }
}

pub struct SigningKey {
    #[allow(dead_code)]
    name: String,
}

impl SigningKey {
    /// `dir/signing.key` (mode 0600; created with OS randomness when missing, the folder 0700);
    /// `name` is the key name (normally the log's origin).
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Self> { todo!("{dir:?}{name}") }
    pub fn name(&self) -> &str { &self.name }
    /// The C2SP verifier key text (what `ferrotune audit pubkey` prints).
    pub fn verifier_key(&self) -> String { todo!() }
    /// The whole signed note: body, blank line, signature line.
    pub fn sign(&self, cp: &Checkpoint) -> String { todo!("{cp:?}") }
}

pub struct Verifier {
    #[allow(dead_code)]
    name: String,
}

impl Verifier {
    /// Parse a verifier key text; a malformed one is an error naming what is wrong.
    pub fn parse(vkey: &str) -> Result<Self> { todo!("{vkey}") }
    pub fn name(&self) -> &str { &self.name }
    /// Check a signed note's signature by this key and parse its checkpoint body; other
    /// signers' lines are ignored; no valid line by this key → error.
    pub fn verify(&self, note: &str) -> Result<Checkpoint> { todo!("{note}") }
}
