//! C2SP `signed-note` + `tlog-checkpoint` with Ed25519 (c2sp.org/signed-note,
//! c2sp.org/tlog-checkpoint): the checkpoint body is `<origin>\n<size>\n<base64 root>\n`, then a
//! blank line, then `— <key name> <base64(4-byte key id ‖ 64-byte signature)>\n`. Key id = the
//! first 4 bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key); verifier key text
//! `<name>+<8 hex digits of key id>+<base64(0x01 ‖ public key)>`.
//!
//! Parsing follows Go's `golang.org/x/mod/sumdb/note` (the reference the specs grew from): key
//! names are non-empty UTF-8 without Unicode spaces or `+`; a note is UTF-8 without control
//! characters other than `\n`; the text ends at the last blank line; at most 100 signatures; a
//! line by an unknown key is skipped, a line by our name and id must verify. The private key file
//! is Go's signer key text, `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ 32-byte seed)>`, so
//! `note.NewSigner` reads it (after trimming the newline).

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};

use crate::audit::merkle::Hash;
use crate::error::{GovernError, Result};

/// Signature type byte of Ed25519 in key ids and verifier keys (signed-note §Signature types).
const ALG_ED25519: u8 = 0x01;
/// Go's `Open` refuses notes with more signature lines than this.
const MAX_SIGNATURES: usize = 100;
const SIG_PREFIX: &str = "— ";
const KEY_FILE: &str = "signing.key";
const VERIFIER_FILE: &str = "verifier.key";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note body (three lines, each ending in `\n`).
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parse a checkpoint body (the note text, ending in `\n`): origin, tree size (decimal, no
    /// leading zeros), base64 root of 32 bytes; extension lines after them are allowed (they must
    /// be non-empty) and ignored.
    pub fn parse(body: &str) -> Result<Self> {
        let bad = |line: usize, what: &str, reason: String| GovernError::Invalid {
            field: "checkpoint",
            reason: format!("body line {line} ({what}): {reason}"),
        };
        let Some(text) = body.strip_suffix('\n') else {
            return Err(GovernError::Invalid {
                field: "checkpoint",
                reason: "the body does not end in a newline".into(),
            });
        };
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < 3 {
            return Err(GovernError::Invalid {
                field: "checkpoint",
                reason: format!(
                    "the body has {} line(s); a checkpoint has origin, tree size and root hash",
                    lines.len()
                ),
            });
        }
        let origin = lines[0];
        if origin.is_empty() {
            return Err(bad(1, "origin", "empty".into()));
        }
        let size_text = lines[1];
        let digits = !size_text.is_empty() && size_text.bytes().all(|b| b.is_ascii_digit());
        let canonical = digits && (size_text == "0" || !size_text.starts_with('0'));
        if !canonical {
            return Err(bad(
                2,
                "tree size",
                format!("`{size_text}` is not a decimal number without leading zeros"),
            ));
        }
        let size =
            size_text.parse::<u64>().map_err(|e| bad(2, "tree size", format!("`{size_text}`: {e}")))?;
        let raw =
            B64.decode(lines[2]).map_err(|e| bad(3, "root hash", format!("not standard base64: {e}")))?;
        let root: Hash = raw
            .try_into()
            .map_err(|raw: Vec<u8>| bad(3, "root hash", format!("{} bytes, not 32", raw.len())))?;
        if let Some(i) = lines.iter().skip(3).position(|l| l.is_empty()) {
            return Err(bad(i + 4, "extension", "empty (extension lines must be non-empty)".into()));
        }
        Ok(Self { origin: origin.to_string(), size, root })
    }
}

/// Go's `isValidName`: non-empty, no Unicode white space (Rust's `char::is_whitespace` is the
/// same White_Space set as Go's `unicode.IsSpace`), no `+`.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the key name is empty".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || *c == '+') {
        return Err(format!(
            "the key name `{}` contains {:?} (names may hold no space and no `+`)",
            name.escape_debug(),
            c
        ));
    }
    Ok(())
}

/// SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4], big-endian.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn verifier_key_text(name: &str, id: u32, public_key: &[u8; 32]) -> String {
    let mut key = Vec::with_capacity(33);
    key.push(ALG_ED25519);
    key.extend_from_slice(public_key);
    format!("{name}+{id:08x}+{}", B64.encode(key))
}

/// Splits `<a>+<b>+<rest>` where only `rest` (base64) may contain `+`.
fn split_key_text(text: &str) -> Option<(&str, &str, &str)> {
    let (name, rest) = text.split_once('+')?;
    let (id, key) = rest.split_once('+')?;
    Some((name, id, key))
}

fn parse_hex_id(hex_id: &str) -> std::result::Result<u32, String> {
    if hex_id.len() != 8 || !hex_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("key id `{hex_id}` is not 8 hex digits"));
    }
    u32::from_str_radix(hex_id, 16).map_err(|e| format!("key id `{hex_id}`: {e}"))
}

/// `0x01 ‖ 32 bytes` in base64 → the 32 bytes.
fn parse_alg_key(key64: &str, what: &str) -> std::result::Result<[u8; 32], String> {
    let raw = B64.decode(key64).map_err(|e| format!("the {what} is not standard base64: {e}"))?;
    match raw.split_first() {
        None => Err(format!("the {what} is missing")),
        Some((&ALG_ED25519, key)) => {
            key.try_into().map_err(|_| format!("the Ed25519 {what} is {} bytes, not 32", key.len()))
        }
        Some((alg, _)) => Err(format!(
            "unknown algorithm byte 0x{alg:02x} before the {what} (only Ed25519, 0x01, is known)"
        )),
    }
}

pub struct SigningKey {
    name: String,
    id: u32,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    /// Never prints the seed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// `dir/signing.key` (mode 0600; created with OS randomness when missing, the folder 0700);
    /// `name` is the key name (normally the log's origin).
    ///
    /// A new key is written to a private temp file and hard-linked into place, which fails when
    /// the file exists: no half-written key is ever visible, and of two processes creating at
    /// once one wins and the other loads the winner's key. `dir/verifier.key` (the verifier key
    /// text and `\n`) is rewritten whenever it differs from the loaded key.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Self> {
        check_name(name).map_err(|reason| GovernError::Invalid { field: "key name", reason })?;
        let path = dir.join(KEY_FILE);
        let key = match Self::load(&path)? {
            Some(key) => key,
            None => match Self::create(dir, &path, name)? {
                Some(key) => key,
                // Another process linked its key first: use that one.
                None => Self::load(&path)?.ok_or_else(|| GovernError::Io {
                    path: path.clone(),
                    error: std::io::Error::new(
                        ErrorKind::NotFound,
                        "the signing key vanished right after another process created it",
                    ),
                })?,
            },
        };
        if key.name != name {
            return Err(GovernError::Refused(format!(
                "{}: the signing key is named `{}`, but this log's key name is `{name}`; use the log's own key folder, or move the \
                 key away to make a new one (checkpoints signed by the old key then no longer verify with the new verifier key)",
                path.display(),
                key.name
            )));
        }
        key.write_verifier_file(dir)?;
        Ok(key)
    }

    /// The key file at `path`, or `None` when there is none.
    fn load(path: &Path) -> Result<Option<Self>> {
        let io = |source| GovernError::Io { path: path.to_path_buf(), error: source };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(GovernError::BadFile {
                path: path.to_path_buf(),
                field: "permissions".into(),
                reason: format!(
                    "mode {mode:04o} lets other users at the private signing key; run `chmod 600 {}` (and consider the key leaked \
                     if others could read it)",
                    path.display()
                ),
            });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        Self::parse_private(&text).map(Some).map_err(|(field, reason)| GovernError::BadFile {
            path: path.to_path_buf(),
            field,
            reason,
        })
    }

    /// Go's signer key text, `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>` (surrounding
    /// white space ignored): what `load_or_create` reads from `signing.key`.
    pub fn from_private_key_text(text: &str) -> Result<Self> {
        Self::parse_private(text).map_err(|(field, reason)| GovernError::Invalid {
            field: "private key",
            reason: format!("{field}: {reason}"),
        })
    }

    /// Errors are (field, reason).
    fn parse_private(text: &str) -> std::result::Result<Self, (String, String)> {
        let text = text.trim();
        let rest = text.strip_prefix("PRIVATE+KEY+").ok_or_else(|| {
            (
                "format".to_string(),
                "does not start with `PRIVATE+KEY+` (expected PRIVATE+KEY+<name>+<hex id>+<key>)".to_string(),
            )
        })?;
        let (name, hex_id, key64) = split_key_text(rest).ok_or_else(|| {
            ("format".to_string(), "missing parts (expected PRIVATE+KEY+<name>+<hex id>+<key>)".to_string())
        })?;
        check_name(name).map_err(|r| ("key name".to_string(), r))?;
        let id = parse_hex_id(hex_id).map_err(|r| ("key id".to_string(), r))?;
        let seed = parse_alg_key(key64, "private key").map_err(|r| ("key".to_string(), r))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let want = key_id(name, key.verifying_key().as_bytes());
        if id != want {
            return Err((
                "key id".into(),
                format!("{id:08x} does not belong to this key and name (computed {want:08x})"),
            ));
        }
        Ok(Self { name: name.to_string(), id, key })
    }

    /// Creates `dir/signing.key`; `None` when another process created it first.
    fn create(dir: &Path, path: &Path, name: &str) -> Result<Option<Self>> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| GovernError::Io { path: p, error: source }
        };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        // A folder that existed before may be open to others, who could then swap the key.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;

        let mut seed = [0u8; 32];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut seed).map_err(|e| GovernError::Io {
            path: path.to_path_buf(),
            error: std::io::Error::other(format!("no OS randomness for a new signing key: {e}")),
        })?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        let mut payload = Vec::with_capacity(33);
        payload.push(ALG_ED25519);
        payload.extend_from_slice(&seed);
        let text = format!("PRIVATE+KEY+{name}+{id:08x}+{}\n", B64.encode(&payload));

        let tmp = temp_path(dir, KEY_FILE);
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(GovernError::Io { path: tmp, error: e });
        }
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(GovernError::Io { path: path.to_path_buf(), error: e }),
        }
        sync_dir(dir);
        Ok(Some(Self { name: name.to_string(), id, key }))
    }

    fn write_verifier_file(&self, dir: &Path) -> Result<()> {
        let path = dir.join(VERIFIER_FILE);
        let want = format!("{}\n", self.verifier_key());
        if fs::read_to_string(&path).is_ok_and(|have| have == want) {
            return Ok(());
        }
        let tmp = temp_path(dir, VERIFIER_FILE);
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
            f.write_all(want.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(GovernError::Io { path, error: e });
        }
        sync_dir(dir);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The 4-byte key id (big-endian) that prefixes each signature.
    pub fn key_id(&self) -> u32 {
        self.id
    }
    /// The C2SP verifier key text (what `ferrotune audit pubkey` prints).
    pub fn verifier_key(&self) -> String {
        verifier_key_text(&self.name, self.id, self.key.verifying_key().as_bytes())
    }
    /// The verifier of this key.
    pub fn verifier(&self) -> Verifier {
        Verifier { name: self.name.clone(), id: self.id, key: self.key.verifying_key() }
    }
    /// The whole signed note: body, blank line, signature line. (An origin holding a newline or
    /// a control character makes a note that no verifier accepts; the log's origin is checked
    /// where it is configured.)
    pub fn sign(&self, cp: &Checkpoint) -> String {
        let body = cp.body();
        let line = self.signature_line(&body);
        format!("{body}\n{line}")
    }
    /// Any note text (ending in `\n`) signed by this key, as Go's `note.Sign` writes it.
    pub fn sign_text(&self, text: &str) -> Result<String> {
        if !text.ends_with('\n') {
            return Err(GovernError::Invalid {
                field: "note text",
                reason: "does not end in a newline".into(),
            });
        }
        Ok(format!("{text}\n{}", self.signature_line(text)))
    }
    fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&self.id.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }
}

fn temp_path(dir: &Path, file: &str) -> PathBuf {
    let mut nonce = [0u8; 8];
    // A clash only makes `create_new` fail, so a weak nonce is no risk.
    let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    dir.join(format!(".{file}.{}.{}.tmp", std::process::id(), u64::from_le_bytes(nonce)))
}

/// Makes a new name in `dir` durable; best effort (not every file system can open a folder).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

fn bad_note(reason: String) -> GovernError {
    GovernError::Invalid { field: "signed note", reason }
}

impl Verifier {
    /// Parse a verifier key text; a malformed one is an error naming what is wrong.
    pub fn parse(vkey: &str) -> Result<Self> {
        let bad = |reason: String| GovernError::Invalid { field: "verifier key", reason };
        let vkey = vkey.trim();
        let (name, hex_id, key64) = split_key_text(vkey).ok_or_else(|| {
            bad(format!("`{vkey}` is missing parts: expected <name>+<8 hex digits of key id>+<base64 key>"))
        })?;
        check_name(name).map_err(bad)?;
        let id = parse_hex_id(hex_id).map_err(bad)?;
        let public = parse_alg_key(key64, "public key").map_err(bad)?;
        let want = key_id(name, &public);
        if id != want {
            return Err(bad(format!(
                "wrong key id {id:08x}: the name `{name}` and this public key give {want:08x}"
            )));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|e| bad(format!("not an Ed25519 public key: {e}")))?;
        Ok(Self { name: name.to_string(), id, key })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// Check a signed note's signature by this key and parse its checkpoint body; other
    /// signers' lines are ignored; no valid line by this key → error.
    pub fn verify(&self, note: &str) -> Result<Checkpoint> {
        Checkpoint::parse(self.open(note)?)
    }

    /// Check a signed note's signature by this key and return its text (everything before the
    /// blank line, ending in `\n`), whatever the text says. Go's `note.Open` with this one key.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str> {
        if let Some((at, c)) = note.char_indices().find(|&(_, c)| c < ' ' && c != '\n') {
            return Err(bad_note(format!(
                "control character {:?} at byte {at} (notes may hold no control character but newline)",
                c
            )));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad_note("no blank line between the text and the signatures (unsigned)".into()))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if sigs.is_empty() {
            return Err(bad_note("unsigned: no signature lines after the blank line".into()));
        }
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return Err(bad_note("the last signature line does not end in a newline".into()));
        };
        let text_lines = text.matches('\n').count();
        let mut signers = Vec::new();
        let mut verified = false;
        for (i, line) in sigs.split('\n').enumerate() {
            let line_no = text_lines + 2 + i;
            if i >= MAX_SIGNATURES {
                return Err(bad_note(format!("more than {MAX_SIGNATURES} signature lines")));
            }
            let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
                bad_note(format!(
                    "line {line_no} is not a signature line (`— <key name> <base64 signature>`)"
                ))
            })?;
            let (name, b64) = rest.split_once(' ').unwrap_or((rest, ""));
            check_name(name).map_err(|r| bad_note(format!("line {line_no}: {r}")))?;
            let raw = B64.decode(b64).map_err(|e| {
                bad_note(format!("line {line_no}: the signature is not standard base64: {e}"))
            })?;
            if raw.len() < 5 {
                let n = raw.len();
                return Err(bad_note(format!(
                    "line {line_no}: the signature is {n} bytes, too short for a key id and a signature"
                )));
            }
            let id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            signers.push(format!("{name}+{id:08x}"));
            if name != self.name || id != self.id || verified {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&raw[4..]).map_err(|_| {
                bad_note(format!(
                    "bad signature by {name}+{id:08x} (line {line_no}): {} bytes, not 64",
                    raw.len() - 4
                ))
            })?;
            self.key.verify_strict(text.as_bytes(), &sig).map_err(|_| {
                bad_note(format!("bad signature by {name}+{id:08x} (line {line_no}): the text was changed or signed by another key"))
            })?;
            verified = true;
        }
        if !verified {
            return Err(bad_note(format!(
                "unsigned by {}+{:08x} (signed by: {})",
                self.name,
                self.id,
                signers.join(", ")
            )));
        }
        Ok(text)
    }
}
