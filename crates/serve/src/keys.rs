//! API keys in an embedded SQLite database (`$FERROTUNE_HOME/serve/keys.db`, WAL mode so the
//! server reads while `ferrotune keys` writes). A key is `ft-` + 64 hex digits of OS randomness,
//! shown once at creation; only its SHA-256 is stored. Revoked keys stay in the table (with the
//! revocation time) so the record of who had access survives; a name is unique among live keys.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::TryRngCore;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "ft-";

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    /// Model / adapter names this key may use; empty = all.
    pub models: Vec<String>,
    /// May load and unload adapters (and use every model).
    pub admin: bool,
    /// Requests per minute; `None` = unlimited.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute; `None` = unlimited.
    pub tpm: Option<u32>,
}

impl ApiKey {
    pub fn may_use(&self, model: &str) -> bool {
        self.admin || self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
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
    #[error("keys database {path}: {source}")]
    Db { path: PathBuf, source: rusqlite::Error },
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

pub fn default_db_path() -> PathBuf {
    ferrotune_model::store::home().join("serve").join("keys.db")
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
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

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl KeyStore {
    /// Open (creating the folder, file and table when missing).
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.into(), source })?;
        }
        let db = |source| KeyError::Db { path: path.into(), source };
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(())).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self { conn: Mutex::new(conn), path: path.into() })
    }

    fn db(&self, source: rusqlite::Error) -> KeyError {
        KeyError::Db { path: self.path.clone(), source }
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
        if key.rpm == Some(0) || key.tpm == Some(0) {
            return Err(KeyError::Invalid { field: "rpm/tpm", reason: "must be positive (leave out for unlimited)".into() });
        }
        if key.models.iter().any(|m| m.is_empty()) {
            return Err(KeyError::Invalid { field: "models", reason: "empty model name".into() });
        }
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| KeyError::Invalid {
            field: "key",
            reason: format!("no OS randomness: {e}"),
        })?;
        let secret = format!("{KEY_PREFIX}{}", hex::encode(bytes));
        let models = serde_json::to_string(&key.models).unwrap_or_else(|_| "[]".into());
        let res = self.conn().execute(
            "INSERT INTO api_keys (name, hash, hint, models, admin, rpm, tpm, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![key.name, hash_key(&secret), &secret[..9], models, key.admin, key.rpm, key.tpm, now_unix()],
        );
        match res {
            Ok(_) => Ok(secret),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(KeyError::Exists(key.name.clone()))
            }
            Err(e) => Err(self.db(e)),
        }
    }

    /// The live key with this secret, if any.
    pub fn lookup(&self, secret: &str) -> Result<Option<ApiKey>, KeyError> {
        let conn = self.conn();
        conn.query_row(
            "SELECT name, models, admin, rpm, tpm FROM api_keys WHERE hash = ?1 AND revoked IS NULL",
            params![hash_key(secret)],
            row_to_key,
        )
        .optional()
        .map_err(|e| self.db(e))
    }

    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, models, admin, rpm, tpm, hint, created, revoked FROM api_keys ORDER BY id")
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(KeyRecord { key: row_to_key(r)?, hint: r.get(5)?, created_unix: r.get(6)?, revoked_unix: r.get(7)? })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }

    pub fn revoke(&self, name: &str) -> Result<(), KeyError> {
        let n = self
            .conn()
            .execute("UPDATE api_keys SET revoked = ?1 WHERE name = ?2 AND revoked IS NULL", params![now_unix(), name])
            .map_err(|e| self.db(e))?;
        if n == 0 { Err(KeyError::NoSuchKey(name.into())) } else { Ok(()) }
    }

    pub fn live_count(&self) -> Result<usize, KeyError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM api_keys WHERE revoked IS NULL", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| self.db(e))
    }
}

fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    let models: String = r.get(1)?;
    Ok(ApiKey {
        name: r.get(0)?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        admin: r.get(2)?,
        rpm: r.get(3)?,
        tpm: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ApiKey {
        ApiKey { name: name.into(), models: vec!["a".into()], admin: false, rpm: Some(5), tpm: None }
    }

    #[test]
    fn created_keys_are_found_by_secret_and_stored_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("serve/keys.db");
        let store = KeyStore::open(&path).expect("open");
        let secret = store.create(&key("alice")).expect("create");
        assert!(secret.starts_with(KEY_PREFIX) && secret.len() == 3 + 64);
        assert_eq!(store.lookup(&secret).expect("lookup"), Some(key("alice")));
        assert_eq!(store.lookup("ft-wrong").expect("lookup"), None);
        let raw = std::fs::read(&path).expect("db file");
        let needle = &secret.as_bytes()[3..];
        assert!(!raw.windows(needle.len()).any(|w| w == needle), "the secret must not be stored");
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
    fn scope_rules() {
        let mut k = key("c");
        assert!(k.may_use("a") && !k.may_use("b"));
        k.models.clear();
        assert!(k.may_use("b"));
        k.models = vec!["a".into()];
        k.admin = true;
        assert!(k.may_use("b"));
    }
}
