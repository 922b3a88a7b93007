//! The append-only log in `$FERROTUNE_HOME/audit/` (exchange formats: `mod.rs`).
//!
//! ## Files (folder mode 0700)
//! - `entries.log`: one canonical JSON entry per line. Entry `i` is line `i − A + 1`, where `A` is
//!   the number of archived entries (entries `0..A` live in `archive/`).
//! - `leaves.bin`: the 32-byte leaf hash of entry `i` at offset `32·i`, archived entries included.
//!   What checkpoints are signed over and proofs are built from; `open` only ever fixes its
//!   length after an interrupted write (never its content: a leaf that disagrees with its entry
//!   is evidence, reported by `verify`).
//! - `checkpoints/<size, 12 digits>.note`: every signed checkpoint, kept; never overwritten (a
//!   different note for a size already signed is refused: a rewritten history).
//! - `archive/<first>-<last>.log.gz` (12-digit indexes, inclusive; gzip of the lines) and
//!   `archive/manifest.json` `{"segments": [{"file", "first", "last", "sha256"}]}` (SHA-256 of the
//!   `.gz` file, hex).
//! - `signing.key` / `verifier.key` (`note::SigningKey::load_or_create`, which rewrites
//!   `verifier.key` from `signing.key`; a different key found there is reported by `verify`).
//!   Appends are refused when the newest checkpoint does not verify with `signing.key` (the key
//!   was replaced). `origin`: the checkpoints' first line, fixed when the log is made. `lock`.
//!
//! ## Concurrency and crashes
//! Every change (append, checkpoint, archive, the repair in `open`) holds an exclusive
//! `flock` on `lock` (`File::lock`: other processes — server, CLI — and other handles in this
//! process block until it is released). Under the lock the writer first notices what others
//! did (file lengths and `entries.log`'s inode), then writes its batch in one `write_all` to
//! `entries.log`, then the leaf hashes to `leaves.bin`, fsyncs both, and maybe signs a
//! checkpoint. A crash can leave a last line without `\n` or `leaves.bin` of a different length
//! than the entries: the next `open` (or writer) cuts the torn line and brings `leaves.bin` to
//! the line count, with one warning on stderr. Readers (verify, proofs, search, export) take a
//! snapshot (entry count, an open handle of `entries.log`, its length) under the lock and read
//! without it: `entries.log` only grows, and archiving replaces it by rename.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::audit::merkle::{self, Frontier, Hash};
use crate::audit::note::{Checkpoint, SigningKey, Verifier};
use crate::audit::store::{self, Seen, Snapshot};
use crate::error::{GovernError, Result};

/// One event. `canonical()` is what the tree commits to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 UTC, filled with now when empty.
    pub time: String,
    /// Key name (server) or OS user / `--by` (CLI).
    pub actor: String,
    /// e.g. `train.start`, `registry.alias-set`, `inference`, `keys.create`, `serve.start`.
    pub action: String,
    /// What it is about: ids and hashes (`{"run": 3, "artifact": "support@2", "sha256": …}`).
    pub subject: serde_json::Value,
    /// `ok`, `failed`, `refused`, …
    pub outcome: String,
    /// Action-specific fields.
    pub fields: serde_json::Value,
}

impl Event {
    pub fn new(
        actor: &str,
        action: &str,
        subject: serde_json::Value,
        outcome: &str,
        fields: serde_json::Value,
    ) -> Self {
        Self {
            time: String::new(),
            actor: actor.into(),
            action: action.into(),
            subject,
            outcome: outcome.into(),
            fields,
        }
    }
    /// Canonical JSON: keys sorted at every level, no insignificant whitespace, no floats (a
    /// float is written as a string of its shortest round-trip form); one line, UTF-8.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_canonical(&self.time, &mut out);
        out
    }

    /// The canonical object written field by field (sorted: action, actor, fields, outcome,
    /// subject, time) with `time` given, so `append` fills an empty time without a clone.
    fn write_canonical(&self, time: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"action\":");
        write_str(&self.action, out);
        out.extend_from_slice(b",\"actor\":");
        write_str(&self.actor, out);
        out.extend_from_slice(b",\"fields\":");
        write_canonical_value(&self.fields, out);
        out.extend_from_slice(b",\"outcome\":");
        write_str(&self.outcome, out);
        out.extend_from_slice(b",\"subject\":");
        write_canonical_value(&self.subject, out);
        out.extend_from_slice(b",\"time\":");
        write_str(time, out);
        out.push(b'}');
    }
}

/// JSON string with serde_json's escaping (`"`, `\`, control characters; `\n` as `\n`), so a
/// value never breaks the one-line-per-entry framing; other characters stay UTF-8.
fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Canonical form of any JSON value (see `Event::canonical`). `preserve_order` is on in this
/// workspace, so object keys are sorted here, by their UTF-8 bytes (= code point order).
pub(crate) fn write_canonical_value(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                // serde_json numbers are finite; Display is the shortest string that round-trips.
                let f = n.as_f64().unwrap_or(0.0);
                let _ = write!(out, "\"{f}\"");
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<(&String, &Value)> = map.iter().collect();
            keys.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, item)) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write_canonical_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// `[audit]` settings (serve.toml) / defaults for the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The log's origin line (the checkpoint's first line), e.g. `ferrotune.example/audit`.
    /// Default: `ferrotune/<hostname>/audit`.
    pub origin: Option<String>,
    /// Sign a checkpoint every N entries …
    pub checkpoint_every_entries: u64,
    /// … or when the last one is older than this many seconds (at the next append).
    pub checkpoint_every_secs: u64,
    /// Entries older than this move to archive segments (at least 183: Art. 19 / 26(6)).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { origin: None, checkpoint_every_entries: 1000, checkpoint_every_secs: 60, retention_days: 183 }
    }
}

/// Six months, rounded up: the least retention the EU AI Act allows.
pub const MIN_RETENTION_DAYS: u32 = 183;

impl AuditConfig {
    pub fn validate(&self) -> Result<()> {
        if self.retention_days < MIN_RETENTION_DAYS {
            return Err(GovernError::Refused(format!(
                "audit retention_days = {} is too short: the EU AI Act requires providers (Art. 19(1)) and deployers \
                 (Art. 26(6)) of high-risk AI systems to keep the automatically generated logs for at least six months \
                 ({MIN_RETENTION_DAYS} days)",
                self.retention_days
            )));
        }
        if self.checkpoint_every_entries == 0 {
            return Err(GovernError::Invalid {
                field: "checkpoint_every_entries",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(o) = &self.origin
            && (o.is_empty() || o.contains(['\n', ' ']) || o.chars().any(char::is_control))
        {
            return Err(GovernError::Invalid {
                field: "origin",
                reason: format!("{o:?}: one non-empty line without spaces"),
            });
        }
        Ok(())
    }
}

/// What `append` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Appended {
    /// Index of the first appended entry.
    pub first: u64,
    /// Tree size after.
    pub size: u64,
    /// Set when this append signed a checkpoint.
    pub checkpoint: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoints: u64,
    pub root: String,
    /// Whether all is well; otherwise `problems` names the first bad entry / checkpoint.
    pub ok: bool,
    pub problems: Vec<String>,
}

/// Filter for show / tail / search / export.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Entries with `time >= since` (RFC 3339 strings compare as times in our UTC format).
    pub since: Option<String>,
    /// Entries with `time < until`.
    pub until: Option<String>,
    pub actor: Option<String>,
    /// Exact action or a prefix ending in `.` / `*` (`registry.*`).
    pub action: Option<String>,
    /// Substring of the subject's canonical JSON.
    pub subject: Option<String>,
    pub limit: Option<usize>,
}

/// The fields a filter looks at first, borrowed from the line (no `Value` built).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    time: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    actor: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    action: std::borrow::Cow<'a, str>,
}

impl Filter {
    pub fn matches(&self, entry: &serde_json::Value) -> bool {
        let text = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or("");
        if !self.head_matches(text("time"), text("actor"), text("action")) {
            return false;
        }
        if let Some(sub) = self.subject.as_deref() {
            let mut s = Vec::new();
            write_canonical_value(entry.get("subject").unwrap_or(&serde_json::Value::Null), &mut s);
            if !String::from_utf8_lossy(&s).contains(sub) {
                return false;
            }
        }
        true
    }

    /// A cheap first look at an entry line, on its borrowed time / actor / action (no `Value`
    /// built): `Some(false)` when it certainly does not match (a canonical line holds its
    /// subject's canonical JSON verbatim), `Some(true)` when it certainly does, `None` when only
    /// `matches` on the parsed entry can tell (a subject filter, or an odd line).
    pub(crate) fn quick(&self, line: &[u8]) -> Option<bool> {
        if let Some(sub) = self.subject.as_deref().map(str::as_bytes).filter(|s| !s.is_empty())
            && !line.windows(sub.len()).any(|w| w == sub)
        {
            return Some(false);
        }
        match serde_json::from_slice::<Head>(line) {
            Ok(h) if !self.head_matches(&h.time, &h.actor, &h.action) => Some(false),
            Ok(_) if self.subject.is_none() => Some(true),
            _ => None,
        }
    }

    fn head_matches(&self, time: &str, actor: &str, action: &str) -> bool {
        if self.since.as_deref().is_some_and(|s| time < s) || self.until.as_deref().is_some_and(|u| time >= u)
        {
            return false;
        }
        if self.actor.as_deref().is_some_and(|a| actor != a) {
            return false;
        }
        match self.action.as_deref() {
            None => true,
            Some(want) => match want.strip_suffix('*') {
                Some(prefix) => action.starts_with(prefix),
                None if want.ends_with('.') => action.starts_with(want),
                None => action == want,
            },
        }
    }
}

impl State {
    pub fn push_leaf(&mut self, h: Hash) {
        self.frontier.push(h);
        self.frontier_last = h;
    }
}

/// What this handle knows of the files; re-checked under the lock before every change.
pub(crate) struct State {
    /// `entries.log` / `leaves.bin` as last seen; `None` forces a full look.
    pub seen: Option<Seen>,
    pub size: u64,
    pub archived: u64,
    /// Over `leaves.bin[0..frontier.size()]`; caught up lazily (a read-only handle never builds it).
    pub frontier: Frontier,
    /// The last leaf pushed into `frontier`.
    pub frontier_last: Hash,
    /// Re-check the frontier's last leaf against `leaves.bin` (someone else changed the files).
    pub recheck_frontier: bool,
    /// Stored checkpoint sizes and the `checkpoints/` mtime they were read at.
    pub cps: BTreeSet<u64>,
    pub cps_stamp: Option<SystemTime>,
    /// When the last checkpoint was signed (the log's creation before the first).
    pub last_cp_time: SystemTime,
}

pub struct AuditLog {
    pub(crate) dir: PathBuf,
    pub(crate) cfg: AuditConfig,
    pub(crate) origin: String,
    pub(crate) key: SigningKey,
    /// The verifier key of `signing.key` (also in `verifier.key`).
    pub(crate) vkey: String,
    /// Whether the newest stored checkpoint verifies with `signing.key` (else appends are refused).
    key_ok: bool,
    /// What `open` found wrong with the keys (also reported by `verify`).
    pub(crate) key_notes: Vec<String>,
    lock_file: File,
    state: Mutex<State>,
    repair_note: Option<String>,
}

/// `$FERROTUNE_HOME/audit`.
pub fn default_dir() -> PathBuf {
    ferrotune_model::store::home().join("audit")
}

/// Whether a signed note has a signature line whose key id is the verifier key's
/// (`— <name> base64(key id ‖ signature)`; key text `<name>+<hex id>+<key>`).
fn names_key(note: &str, vkey: &str) -> bool {
    use base64::Engine as _;
    let mut parts = vkey.split('+');
    let (Some(name), Some(id)) = (parts.next(), parts.next()) else { return false };
    note.lines().filter_map(|l| l.strip_prefix("\u{2014} ")).any(|sig| {
        let mut words = sig.split(' ');
        let (Some(n), Some(b64)) = (words.next(), words.next()) else { return false };
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
        n == name && bytes.len() > 4 && hex::encode(&bytes[..4]) == id.to_ascii_lowercase()
    })
}

/// `ferrotune/<hostname>/audit`.
fn default_origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".into());
    format!("ferrotune/{host}/audit")
}

struct Opened {
    origin: String,
    key: SigningKey,
    vkey: String,
    key_ok: bool,
    key_notes: Vec<String>,
    state: State,
    repair_note: Option<String>,
}

/// The state lock and the file lock, released in that order's reverse on drop.
pub(crate) struct Locked<'a> {
    pub st: MutexGuard<'a, State>,
    file: &'a File,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl AuditLog {
    /// Open (creating the folder 0700, the key, empty files) and repair a torn tail (a last
    /// record cut by a crash is removed with a warning on stderr; the tree is rebuilt to the
    /// last complete entry).
    pub fn open(dir: &Path, cfg: &AuditConfig) -> Result<Self> {
        cfg.validate()?;
        store::create_dirs(dir)?;
        let lock_path = dir.join(store::LOCK);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(store::io(&lock_path))?;
        lock_file.lock().map_err(store::io(&lock_path))?;
        let opened = Self::open_locked(dir, cfg, &lock_file);
        let _ = lock_file.unlock();
        let o = opened?;
        for note in o.repair_note.iter().chain(&o.key_notes) {
            eprintln!("{note}");
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            origin: o.origin,
            key: o.key,
            vkey: o.vkey,
            key_ok: o.key_ok,
            key_notes: o.key_notes,
            lock_file,
            state: Mutex::new(o.state),
            repair_note: o.repair_note,
        })
    }

    fn open_locked(dir: &Path, cfg: &AuditConfig, _lock: &File) -> Result<Opened> {
        let origin_path = dir.join(store::ORIGIN);
        let origin = match std::fs::read_to_string(&origin_path) {
            Ok(stored) => {
                let stored = stored.trim().to_string();
                if let Some(want) = cfg.origin.as_ref().filter(|w| **w != stored) {
                    return Err(GovernError::Refused(format!(
                        "{}: this log's origin is {stored:?}, the configuration says {want:?}; its checkpoints name the \
                         origin, so it cannot change (use another folder for a new log)",
                        origin_path.display()
                    )));
                }
                stored
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let origin = cfg.origin.clone().unwrap_or_else(default_origin);
                store::write_atomic(&origin_path, format!("{origin}\n").as_bytes())?;
                origin
            }
            Err(e) => return Err(store::io(&origin_path)(e)),
        };
        // load_or_create rewrites verifier.key from signing.key; what was there before is evidence.
        let vkey_path = dir.join(store::VERIFIER);
        let before = std::fs::read_to_string(&vkey_path).ok();
        let key = SigningKey::load_or_create(dir, &origin)?;
        let vkey = key.verifier_key();
        let mut key_notes = Vec::new();
        if let Some(b) = before.filter(|b| b.trim() != vkey) {
            key_notes.push(format!(
                "{}: held a different key ({}) than signing.key; rewritten from signing.key",
                vkey_path.display(),
                b.trim()
            ));
        }
        // The newest checkpoint must be this key's, or the key was replaced: nothing more is signed.
        let mut key_ok = true;
        if let Some(&last) = store::checkpoint_sizes(dir)?.last() {
            let path = store::note_path(dir, last);
            let note = store::read_note(dir, last)?;
            // A note that names this key but does not verify was edited: verify's business. One
            // with no signature by this key means signing.key is not the log's.
            if let Err(e) = Verifier::parse(&vkey)?.verify(&note)
                && !names_key(&note, &vkey)
            {
                key_ok = false;
                key_notes.push(format!(
                    "{}: not signed by this log's signing.key ({e}): the key was replaced; restore the key that signed it, \
                     or move the log aside to start a new one",
                    path.display()
                ));
            }
        }
        let created =
            std::fs::metadata(&origin_path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
        let mut st = State {
            seen: None,
            size: 0,
            archived: 0,
            frontier: Frontier::default(),
            frontier_last: [0; 32],
            recheck_frontier: false,
            cps: BTreeSet::new(),
            cps_stamp: None,
            last_cp_time: created,
        };
        let repair_note = store::sync(dir, &mut st)?;
        Ok(Opened { origin, key, vkey, key_ok, key_notes, state: st, repair_note })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The warning `open` printed when it repaired an interrupted write.
    pub fn repair_note(&self) -> Option<&str> {
        self.repair_note.as_deref()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Take the state and the file lock, and catch up with what other processes did.
    pub(crate) fn lock(&self) -> Result<Locked<'_>> {
        // A panic while the state was held may have left it half updated: forget it and look
        // at the files again.
        let st = self.state.lock().unwrap_or_else(|p| {
            self.state.clear_poison();
            let mut st = p.into_inner();
            st.seen = None;
            st.frontier = Frontier::default();
            st
        });
        let lock_path = self.dir.join(store::LOCK);
        self.lock_file.lock().map_err(store::io(&lock_path))?;
        let mut locked = Locked { st, file: &self.lock_file };
        if let Some(note) = store::sync(&self.dir, &mut locked.st)? {
            eprintln!("{note}");
        }
        Ok(locked)
    }

    /// `signing.key` must be the key that signed the log's checkpoints, or nothing is written.
    fn check_key(&self) -> Result<()> {
        if self.key_ok {
            return Ok(());
        }
        Err(GovernError::Refused(format!("audit log {}: {}", self.dir.display(), self.key_notes.join("; "))))
    }

    /// Append events as one batch under the log's file lock (other processes wait); signs a
    /// checkpoint when the config says it is due. Durable (fsync) when it returns.
    pub fn append(&self, events: &[Event]) -> Result<Appended> {
        self.check_key()?;
        let now = crate::recording::now();
        let mut buf = Vec::with_capacity(events.len() * 256);
        let mut leaves = Vec::with_capacity(events.len() * 32);
        for e in events {
            let start = buf.len();
            e.write_canonical(if e.time.is_empty() { &now } else { &e.time }, &mut buf);
            leaves.extend_from_slice(&merkle::leaf_hash(&buf[start..]));
            buf.push(b'\n');
        }
        let mut g = self.lock()?;
        let first = g.st.size;
        if events.is_empty() {
            return Ok(Appended { first, size: first, checkpoint: None });
        }
        store::catch_up(&self.dir, &mut g.st)?;
        store::append_batch(&self.dir, &mut g.st, &buf, &leaves)?;
        for leaf in leaves.chunks_exact(32) {
            let mut h: Hash = [0; 32];
            h.copy_from_slice(leaf);
            g.st.push_leaf(h);
        }
        let size = g.st.size;
        let mut checkpoint = None;
        if self.checkpoint_due(&g.st) {
            // The entries are durable already: a checkpoint that cannot be written is a warning,
            // not a failed append (a retry would record the events twice).
            match self.sign_locked(&mut g.st) {
                Ok(_) => checkpoint = Some(size),
                Err(e) => eprintln!(
                    "audit log: entries {first}..{size} recorded, but no checkpoint was signed: {e}"
                ),
            }
        }
        Ok(Appended { first, size, checkpoint })
    }

    fn checkpoint_due(&self, st: &State) -> bool {
        let last = st.cps.range(..=st.size).next_back().copied().unwrap_or(0);
        let age = SystemTime::now().duration_since(st.last_cp_time).unwrap_or(Duration::ZERO);
        st.size > last
            && (st.size - last >= self.cfg.checkpoint_every_entries
                || age.as_secs() >= self.cfg.checkpoint_every_secs)
    }

    /// Sign and store a checkpoint of the current size (the caller holds the lock and has
    /// caught the frontier up). A stored note of this size is returned when its root agrees.
    fn sign_locked(&self, st: &mut State) -> Result<(Checkpoint, String)> {
        self.check_key()?;
        let cp = Checkpoint { origin: self.origin.clone(), size: st.size, root: st.frontier.root() };
        if st.cps.contains(&st.size) {
            let note = store::read_note(&self.dir, st.size)?;
            let stored = Verifier::parse(&self.vkey)?.verify(&note);
            if stored.as_ref().is_ok_and(|s| *s == cp) {
                return Ok((cp, note));
            }
            return Err(GovernError::Refused(format!(
                "{}: a checkpoint of size {} is stored already and commits to a different tree than the entries now \
                 in the log (a rewritten history?); not overwritten — run `ferrotune audit verify`",
                store::note_path(&self.dir, st.size).display(),
                st.size
            )));
        }
        let note = self.key.sign(&cp);
        store::write_note(&self.dir, st.size, &note)?;
        st.cps.insert(st.size);
        st.cps_stamp = store::mtime(&self.dir.join(store::CHECKPOINTS));
        st.last_cp_time = SystemTime::now();
        Ok((cp, note))
    }

    /// Sign a checkpoint of the current size now (no-op returning the last one when nothing
    /// was appended since).
    pub fn checkpoint(&self) -> Result<(Checkpoint, String)> {
        let mut g = self.lock()?;
        store::catch_up(&self.dir, &mut g.st)?;
        self.sign_locked(&mut g.st)
    }

    pub fn size(&self) -> Result<u64> {
        Ok(self.lock()?.st.size)
    }

    pub fn verifier_key(&self) -> String {
        self.vkey.clone()
    }

    /// A consistent view to read from without holding the lock.
    pub(crate) fn snapshot(&self) -> Result<Snapshot> {
        let g = self.lock()?;
        store::snapshot(&self.dir, &g.st)
    }

    /// The latest stored checkpoint whose size is at least `need`, signing one of the current
    /// size when there is none. Checked with `verifier.key`.
    pub(crate) fn covering_checkpoint(&self, need: u64) -> Result<(Checkpoint, String)> {
        let mut g = self.lock()?;
        let cps = store::checkpoint_sizes(&self.dir)?;
        match cps.range(..=g.st.size).next_back() {
            Some(&latest) if latest >= need => {
                drop(g);
                let note = store::read_note(&self.dir, latest)?;
                let cp = Verifier::parse(&self.vkey)?.verify(&note).map_err(|e| {
                    GovernError::Refused(format!("{}: {e}", store::note_path(&self.dir, latest).display()))
                })?;
                Ok((cp, note))
            }
            _ => {
                store::catch_up(&self.dir, &mut g.st)?;
                self.sign_locked(&mut g.st)
            }
        }
    }

    /// Entries matching the filter, with their indexes, oldest first (`tail`: the last `limit`).
    pub fn entries(&self, f: &Filter, tail: bool) -> Result<Vec<(u64, serde_json::Value)>> {
        if f.limit == Some(0) {
            return Ok(Vec::new());
        }
        let snap = self.snapshot()?;
        // Lines are kept as bytes and parsed at the end: a tail over a long log parses only
        // the rows it returns (time, actor and action are checked on the borrowed fields).
        let mut out = std::collections::VecDeque::new();
        store::scan(&snap, 0, &mut |i, at, line| {
            match f.quick(line) {
                Some(false) => return Ok(true),
                Some(true) => {}
                None => {
                    let v: serde_json::Value =
                        serde_json::from_slice(line).map_err(|e| at.bad(format!("not a JSON entry: {e}")))?;
                    if !f.matches(&v) {
                        return Ok(true);
                    }
                }
            }
            out.push_back((i, line.to_vec()));
            if let Some(limit) = f.limit {
                if tail && out.len() > limit {
                    out.pop_front();
                } else if !tail && out.len() >= limit {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        out.into_iter()
            .map(|(i, line)| {
                let v = serde_json::from_slice(&line).map_err(|e| GovernError::BadFile {
                    path: self.dir.join(store::ENTRIES),
                    field: format!("entry {i}"),
                    reason: format!("not a JSON entry: {e}"),
                })?;
                Ok((i, v))
            })
            .collect()
    }
}
