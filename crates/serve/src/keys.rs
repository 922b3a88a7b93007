//! API keys in an embedded SQLite database (`$FERROTUNE_HOME/serve/keys.db`, WAL mode so the
//! server reads while `ferrotune keys` writes). A key is `ft-` + 64 hex digits of OS randomness,
//! shown once at creation; only its SHA-256 is stored. Revoked keys stay in the table (with the
//! revocation time) so the record of who had access survives; a name is unique among live keys.
//!
//! The server looks every request's key up here, so a revoke, a new key or a changed limit
//! (`ferrotune keys update`) applies to the next request. Rate-limit buckets are kept per key
//! `id`, so a key re-created under a revoked name starts with its own buckets.
//!
//! Knowledge-base scope (`kbs`) came after the first schema: files without the column get it on
//! open, with no knowledge base for existing keys (they keep the bases attached to the models
//! they may use; `ferrotune keys update --name N --kbs ...` grants more). The `logprobs`
//! permission came later too: existing keys get it off (only admin keys see token logprobs until
//! `ferrotune keys update --name N --logprobs true`).
//!
//! Crash points (test-only, [`ferrotune_model::crash`]): `key-create` / `key-revoke` (the row
//! written in an open transaction, not committed), `key-created` / `key-revoked` (committed,
//! before the caller hears of it).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::TryRngCore;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "ft-";

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiKey {
    /// The row id (set by the store; ignored by `create`): the identity limits are kept under.
    pub id: i64,
    pub name: String,
    /// Model / adapter names this key may use; empty = all.
    pub models: Vec<String>,
    /// May load and unload adapters (and use every model).
    pub admin: bool,
    /// Requests per minute; `None` = unlimited.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute; `None` = unlimited.
    pub tpm: Option<u32>,
    /// Knowledge bases this key may name in a request; `*` = all; empty = none (bases attached
    /// in serve.toml to a model the key may use still apply to that model).
    pub kbs: Vec<String>,
    /// Sequences in flight at most; `None` = the server's `limits.max_concurrent`.
    pub max_concurrent: Option<u32>,
    /// May ask for `logprobs` / `top_logprobs` / `echo` (issue #20: they expose the model's
    /// distribution, which helps extract it or its training data). Admin keys may regardless.
    pub logprobs: bool,
}

impl ApiKey {
    /// An entry permits that name; an entry `support` also permits every registry reference to
    /// the artifact (`support@canary`, `support@3`), while `support@canary` permits only itself.
    pub fn may_use(&self, model: &str) -> bool {
        self.admin
            || self.models.is_empty()
            || self.models.iter().any(|m| {
                m == model || model.strip_prefix(m.as_str()).is_some_and(|rest| rest.starts_with('@'))
            })
    }

    pub fn may_use_kb(&self, kb: &str) -> bool {
        self.admin || self.kbs.iter().any(|k| k == "*" || k == kb)
    }

    /// May see token logprobs (and the echoed, scored prompt).
    pub fn may_see_logprobs(&self) -> bool {
        self.admin || self.logprobs
    }
}

/// Changes to a live key (`None` = leave as is; `Some(None)` = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    pub models: Option<Vec<String>>,
    pub kbs: Option<Vec<String>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u32>>,
    pub max_concurrent: Option<Option<u32>>,
    pub logprobs: Option<bool>,
}

/// A row of `ferrotune keys list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key: ApiKey,
    /// The first characters of the key, to recognise it (`ft-1a2b…`).
    pub hint: String,
    pub created_unix: i64,
    pub revoked_unix: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `os`: what the file system said to a small write beside the database, when SQLite's own
    /// message is only "disk I/O error", "database or disk is full" or "readonly database" (see
    /// [`KeyError::db`]). SQLite's error is in the message, not chained (it printed twice).
    #[error("keys database {}: {error}{}", path.display(), os.as_ref().map(|o| format!(" ({}: {o})", ferrotune_govern::error::parent_of(path).display())).unwrap_or_default())]
    Db { path: PathBuf, error: rusqlite::Error, os: Option<std::io::Error> },
    #[error("creating {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("a live key named `{0}` already exists (revoke it first)")]
    Exists(String),
    #[error("no live key named `{0}`")]
    NoSuchKey(String),
    #[error("invalid key name `{0}`: use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl KeyError {
    /// A SQLite error on the database at `path`, with what the OS says when the file system
    /// caused it ([`ferrotune_govern::error::os_cause`]).
    pub fn db(path: &Path, error: rusqlite::Error) -> Self {
        let os = ferrotune_govern::error::os_cause(path, &error);
        KeyError::Db { path: path.into(), error, os }
    }
}

pub fn default_db_path() -> PathBuf {
    ferrotune_model::store::home().join("serve").join("keys.db")
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

pub struct KeyStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    models TEXT NOT NULL,
    admin INTEGER NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    created INTEGER NOT NULL,
    revoked INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_live_name ON api_keys(name) WHERE revoked IS NULL;
";

/// Columns added after the first release, with what existing rows get.
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("kbs", "TEXT NOT NULL DEFAULT '[]'"),
    ("max_concurrent", "INTEGER"),
    ("logprobs", "INTEGER NOT NULL DEFAULT 0"),
];

const COLUMNS: &str = "id, name, models, admin, rpm, tpm, kbs, max_concurrent, logprobs";

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('api_keys')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (col, decl) in ADDED_COLUMNS {
        if have.iter().any(|c| c == col) {
            continue;
        }
        match conn.execute_batch(&format!("ALTER TABLE api_keys ADD COLUMN {col} {decl}")) {
            // Another process (server and CLI opening at once) added it first.
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("duplicate column") => {}
            r => r?,
        }
    }
    Ok(())
}

fn check_limits(rpm: Option<u32>, tpm: Option<u32>, max_concurrent: Option<u32>) -> Result<(), KeyError> {
    if rpm == Some(0) || tpm == Some(0) || max_concurrent == Some(0) {
        return Err(KeyError::Invalid {
            field: "rpm/tpm/max_concurrent",
            reason: "must be positive (leave out for unlimited / the server default)".into(),
        });
    }
    Ok(())
}

fn check_names(field: &'static str, names: &[String]) -> Result<(), KeyError> {
    if names.iter().any(|m| m.is_empty()) {
        return Err(KeyError::Invalid { field, reason: "empty name".into() });
    }
    Ok(())
}

fn to_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl KeyStore {
    /// Open (creating the folder, file and table when missing).
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.into(), source })?;
        }
        let db = |source| KeyError::db(path, source);
        // Switching a new file to WAL (and the first statements while another process does)
        // can fail with SQLITE_BUSY without SQLite calling the busy handler: a server and a
        // `keys create` starting together on a fresh home. Retried for the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::open_once(path) {
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r.map(|conn| Self { conn: Mutex::new(conn), path: path.into() }).map_err(db),
            }
        }
    }

    fn open_once(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        // FULL: a committed revoke survives a power cut, not only a killed process (as the
        // registry's).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(conn)
    }

    fn db(&self, source: rusqlite::Error) -> KeyError {
        KeyError::db(&self.path, source)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable; keep serving.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a key and return its secret (the only time it exists outside the client).
    pub fn create(&self, key: &ApiKey) -> Result<String, KeyError> {
        let name_ok = !key.name.is_empty()
            && key.name.len() <= 64
            && key.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(KeyError::BadName(key.name.clone()));
        }
        check_limits(key.rpm, key.tpm, key.max_concurrent)?;
        check_names("models", &key.models)?;
        check_names("kbs", &key.kbs)?;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| KeyError::Invalid { field: "key", reason: format!("no OS randomness: {e}") })?;
        let secret = format!("{KEY_PREFIX}{}", hex::encode(bytes));
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        let res = tx.execute(
            "INSERT INTO api_keys (name, hash, hint, models, admin, rpm, tpm, created, kbs, max_concurrent, logprobs) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                key.name,
                hash_key(&secret),
                &secret[..9],
                to_json(&key.models),
                key.admin,
                key.rpm,
                key.tpm,
                now_unix(),
                to_json(&key.kbs),
                key.max_concurrent,
                key.logprobs
            ],
        );
        match res {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(KeyError::Exists(key.name.clone()));
            }
            Err(e) => return Err(self.db(e)),
        }
        ferrotune_model::crash::point("key-create");
        tx.commit().map_err(|e| self.db(e))?;
        ferrotune_model::crash::point("key-created");
        Ok(secret)
    }

    /// The live key with this secret, if any.
    pub fn lookup(&self, secret: &str) -> Result<Option<ApiKey>, KeyError> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM api_keys WHERE hash = ?1 AND revoked IS NULL"),
            params![hash_key(secret)],
            row_to_key,
        )
        .optional()
        .map_err(|e| self.db(e))
    }

    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS}, hint, created, revoked FROM api_keys ORDER BY id"))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(KeyRecord {
                    key: row_to_key(r)?,
                    hint: r.get(9)?,
                    created_unix: r.get(10)?,
                    revoked_unix: r.get(11)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }

    pub fn revoke(&self, name: &str) -> Result<(), KeyError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        let n = tx
            .execute(
                "UPDATE api_keys SET revoked = ?1 WHERE name = ?2 AND revoked IS NULL",
                params![now_unix(), name],
            )
            .map_err(|e| self.db(e))?;
        if n == 0 {
            return Err(KeyError::NoSuchKey(name.into()));
        }
        ferrotune_model::crash::point("key-revoke");
        tx.commit().map_err(|e| self.db(e))?;
        ferrotune_model::crash::point("key-revoked");
        Ok(())
    }

    /// Change the scopes or limits of the live key `name`; the server applies them to its next
    /// request.
    pub fn update(&self, name: &str, u: &KeyUpdate) -> Result<(), KeyError> {
        check_limits(u.rpm.flatten(), u.tpm.flatten(), u.max_concurrent.flatten())?;
        check_names("models", u.models.as_deref().unwrap_or_default())?;
        check_names("kbs", u.kbs.as_deref().unwrap_or_default())?;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db(e))?;
        let id: Option<i64> = tx
            .query_row("SELECT id FROM api_keys WHERE name = ?1 AND revoked IS NULL", params![name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db(e))?;
        let id = id.ok_or_else(|| KeyError::NoSuchKey(name.into()))?;
        let set = |sql: &str, v: &dyn rusqlite::ToSql| {
            tx.execute(sql, params![v, id]).map(|_| ()).map_err(|e| self.db(e))
        };
        if let Some(m) = &u.models {
            set("UPDATE api_keys SET models = ?1 WHERE id = ?2", &to_json(m))?;
        }
        if let Some(k) = &u.kbs {
            set("UPDATE api_keys SET kbs = ?1 WHERE id = ?2", &to_json(k))?;
        }
        if let Some(v) = u.rpm {
            set("UPDATE api_keys SET rpm = ?1 WHERE id = ?2", &v)?;
        }
        if let Some(v) = u.tpm {
            set("UPDATE api_keys SET tpm = ?1 WHERE id = ?2", &v)?;
        }
        if let Some(v) = u.max_concurrent {
            set("UPDATE api_keys SET max_concurrent = ?1 WHERE id = ?2", &v)?;
        }
        if let Some(v) = u.logprobs {
            set("UPDATE api_keys SET logprobs = ?1 WHERE id = ?2", &v)?;
        }
        tx.commit().map_err(|e| self.db(e))
    }

    pub fn live_count(&self) -> Result<usize, KeyError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM api_keys WHERE revoked IS NULL", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| self.db(e))
    }
}

/// Reads [`COLUMNS`] in order.
fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    let list = |i| -> rusqlite::Result<Vec<String>> {
        Ok(serde_json::from_str(&r.get::<_, String>(i)?).unwrap_or_default())
    };
    Ok(ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        models: list(2)?,
        admin: r.get(3)?,
        rpm: r.get(4)?,
        tpm: r.get(5)?,
        kbs: list(6)?,
        max_concurrent: r.get(7)?,
        logprobs: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ApiKey {
        ApiKey {
            name: name.into(),
            models: vec!["a".into()],
            rpm: Some(5),
            kbs: vec!["docs".into()],
            ..Default::default()
        }
    }

    #[test]
    fn eight_handles_opening_a_new_key_database_at_once_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("serve").join("keys.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let opened: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        KeyStore::open(&path).and_then(|s| s.live_count()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for h in opened {
                let r = h.join().expect("thread");
                assert!(r.is_ok(), "round {round}: {r:?}");
            }
        }
    }

    /// `lookup` fills in the row id; compare the rest.
    fn without_id(k: Option<ApiKey>) -> Option<ApiKey> {
        k.map(|k| ApiKey { id: 0, ..k })
    }

    #[test]
    fn created_keys_are_found_by_secret_and_stored_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("serve/keys.db");
        let store = KeyStore::open(&path).expect("open");
        let secret = store.create(&key("alice")).expect("create");
        assert!(secret.starts_with(KEY_PREFIX) && secret.len() == 3 + 64);
        assert_eq!(without_id(store.lookup(&secret).expect("lookup")), Some(key("alice")));
        assert_eq!(store.lookup("ft-wrong").expect("lookup"), None);
        // Regression: this read keys.db alone while the new row sat in keys.db-wal, so it passed
        // with plaintext secrets too. Every file of the folder (db, -wal, -shm) is searched.
        let needle = &secret.as_bytes()[3..];
        let mut files = 0;
        for entry in std::fs::read_dir(path.parent().expect("folder")).expect("folder") {
            let raw = std::fs::read(entry.expect("entry").path()).expect("file");
            files += 1;
            assert!(!raw.windows(needle.len()).any(|w| w == needle), "the secret must not be stored");
        }
        assert!(files >= 2, "the WAL file is among those searched");
    }

    #[test]
    fn a_plaintext_secret_in_the_wal_would_be_found_by_the_folder_search() {
        // The check above must be able to fail: a row written the same way, holding the
        // secret itself, is found in the folder's files although keys.db alone lacks it.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.db");
        let store = KeyStore::open(&path).expect("open");
        let needle = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        store
            .conn()
            .execute("INSERT INTO api_keys (name, hash, hint, models, admin, created) VALUES ('p', ?1, 'ft-', '[]', 0, 0)", params![needle])
            .expect("insert");
        let main_file = std::fs::read(&path).expect("keys.db");
        assert!(
            !main_file.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the row is still in the WAL only"
        );
        let found = std::fs::read_dir(dir.path())
            .expect("folder")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("file"))
            .any(|raw| raw.windows(needle.len()).any(|w| w == needle.as_bytes()));
        assert!(found, "a plaintext value must be visible to the folder search");
    }

    #[test]
    fn an_old_keys_file_gains_kb_scope_with_no_knowledge_base_for_existing_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(SCHEMA).expect("old schema");
            c.execute(
                "INSERT INTO api_keys (name, hash, hint, models, admin, rpm, tpm, created) VALUES ('old', ?1, 'ft-abc', '[]', 0, 7, NULL, 1)",
                params![hash_key("ft-old")],
            )
            .expect("old row");
        }
        let store = KeyStore::open(&path).expect("migrates");
        let k = store.lookup("ft-old").expect("lookup").expect("still there");
        assert_eq!((k.name.as_str(), k.rpm, k.kbs.len(), k.max_concurrent), ("old", Some(7), 0, None));
        assert!(!k.may_use_kb("docs"));
        assert!(!k.logprobs && !k.may_see_logprobs(), "existing keys get no logprobs permission");
        store.update("old", &KeyUpdate { logprobs: Some(true), ..Default::default() }).expect("grant");
        assert!(store.lookup("ft-old").expect("lookup").expect("key").may_see_logprobs());
        drop(store);
        KeyStore::open(&path).expect("opening a migrated file again");
    }

    #[test]
    fn updates_change_limits_and_scopes_of_the_live_key_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(&dir.path().join("keys.db")).expect("open");
        let s = store.create(&key("dan")).expect("create");
        let u = KeyUpdate {
            rpm: Some(None),
            tpm: Some(Some(100)),
            kbs: Some(vec!["*".into()]),
            max_concurrent: Some(Some(3)),
            ..Default::default()
        };
        store.update("dan", &u).expect("update");
        let k = store.lookup(&s).expect("lookup").expect("key");
        assert_eq!((k.rpm, k.tpm, k.max_concurrent), (None, Some(100), Some(3)));
        assert!(k.may_use_kb("anything") && k.models == ["a"]);
        assert!(matches!(store.update("nobody", &u), Err(KeyError::NoSuchKey(_))));
        let zero = KeyUpdate { max_concurrent: Some(Some(0)), ..Default::default() };
        assert!(matches!(store.update("dan", &zero), Err(KeyError::Invalid { .. })));
    }

    #[test]
    fn revoked_keys_stop_working_and_names_are_unique_among_live_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(&dir.path().join("keys.db")).expect("open");
        let s1 = store.create(&key("bob")).expect("create");
        assert!(matches!(store.create(&key("bob")), Err(KeyError::Exists(_))));
        store.revoke("bob").expect("revoke");
        assert_eq!(store.lookup(&s1).expect("lookup"), None);
        assert!(matches!(store.revoke("bob"), Err(KeyError::NoSuchKey(_))));
        let s2 = store.create(&key("bob")).expect("a new key under a revoked name");
        assert!(store.lookup(&s2).expect("lookup").is_some());
        let list = store.list().expect("list");
        assert_eq!(list.len(), 2);
        assert!(list[0].revoked_unix.is_some() && list[1].revoked_unix.is_none());
        assert_eq!(store.live_count().expect("count"), 1);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(&dir.path().join("keys.db")).expect("open");
        assert!(matches!(store.create(&key("")), Err(KeyError::BadName(_))));
        assert!(matches!(store.create(&key("a b")), Err(KeyError::BadName(_))));
    }

    #[test]
    fn kb_scope_is_explicit_and_star_means_all() {
        let mut k = key("e");
        assert!(k.may_use_kb("docs") && !k.may_use_kb("hr"));
        k.kbs.clear();
        assert!(!k.may_use_kb("docs"), "no kbs = none, unlike models");
        k.kbs = vec!["*".into()];
        assert!(k.may_use_kb("hr"));
    }

    #[test]
    fn logprobs_need_the_permission_or_admin_and_are_stored_and_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open(&dir.path().join("keys.db")).expect("open");
        let plain = store.create(&key("plain")).expect("create");
        let scorer = store.create(&ApiKey { logprobs: true, ..key("scorer") }).expect("create");
        let admin = store.create(&ApiKey { admin: true, ..key("root") }).expect("create");
        let may = |s: &str| store.lookup(s).expect("lookup").expect("key").may_see_logprobs();
        assert!(!may(&plain) && may(&scorer) && may(&admin));
        store
            .update("scorer", &KeyUpdate { logprobs: Some(false), ..Default::default() })
            .expect("revoke the permission");
        assert!(!may(&scorer));
        let listed: Vec<(String, bool)> =
            store.list().expect("list").into_iter().map(|r| (r.key.name, r.key.logprobs)).collect();
        assert_eq!(
            listed,
            [("plain".to_string(), false), ("scorer".to_string(), false), ("root".to_string(), false)]
        );
        // `list` reads the columns after the key's by position: the hint and dates still line up.
        assert!(
            store.list().expect("list").iter().all(|r| r.hint.starts_with(KEY_PREFIX) && r.created_unix > 0)
        );
    }

    #[test]
    fn scope_rules() {
        let mut k = key("c");
        assert!(k.may_use("a") && !k.may_use("b"));
        k.models.clear();
        assert!(k.may_use("b"));
        k.models = vec!["a".into()];
        k.admin = true;
        assert!(k.may_use("b"));
    }

    #[test]
    fn an_artifact_name_permits_its_registry_references_and_an_alias_only_itself() {
        let mut k = key("r");
        k.models = vec!["support".into(), "sales@canary".into()];
        for ok in ["support", "support@champion", "support@3", "sales@canary"] {
            assert!(k.may_use(ok), "{ok}");
        }
        for refused in ["supporter", "supporter@1", "sales", "sales@champion", "sales@2", "sales@canary2"] {
            assert!(!k.may_use(refused), "{refused}");
        }
    }
}
