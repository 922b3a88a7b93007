//! Supply-chain check (OWASP LLM03) before a registry version is served: every file the registry
//! recorded for it must hash to the recorded SHA-256, and the files the adapter loader reads must
//! be among them. A file's verdict is remembered with its size and modification time, so a
//! request re-hashes nothing unless the file changed on disk (then it is hashed again).
//!
//! What this does not cover: a file rewritten between the hash and the loader's read with the
//! same size and modification time (the stamp is checked again after loading, which catches
//! every other change in that window).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ferrotune_govern::ArtifactRecord;

/// The files `ferrotune_model::Adapter::load` reads from an adapter folder.
const LOADER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// A file that failed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityError {
    /// Relative to the artifact's folder when inside it (what the client is told).
    pub file: String,
    pub path: PathBuf,
    pub expected: String,
    /// The SHA-256 found, or why there is none (`missing`, `unreadable: …`).
    pub actual: String,
}

/// What a passed check gives the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// [`crate::cache::digest_files`] of the loader's files, for the response cache's key (the
    /// same value loading the folder by path gives).
    pub cache_digest: String,
    stamps: Vec<(PathBuf, Stamp)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp { len: m.len(), modified: m.modified().ok() })
}

/// Verdicts remembered per (artifact id, file): the stamp the file had when it hashed right.
#[derive(Debug, Default)]
pub struct Verifier {
    passed: Mutex<HashMap<(i64, PathBuf), Stamp>>,
}

impl Verifier {
    /// Check every recorded file of `a` (blocking: hashes what changed since it last passed).
    pub fn verify(&self, a: &ArtifactRecord) -> Result<Verified, IntegrityError> {
        let dir = Path::new(&a.path);
        let files: Vec<(PathBuf, &str)> =
            a.files.iter().map(|f| (resolve(dir, &f.path), f.sha256.as_str())).collect();
        for name in LOADER_FILES {
            let path = dir.join(name);
            if !files.iter().any(|(p, _)| *p == path) {
                return Err(IntegrityError {
                    file: name.into(),
                    path,
                    expected: "(not recorded: the registry holds no hash for it)".into(),
                    actual: "(not checked)".into(),
                });
            }
        }
        let mut stamps = Vec::with_capacity(files.len());
        let mut loader = Vec::with_capacity(LOADER_FILES.len());
        for (path, expected) in files {
            let fail = |actual: String| IntegrityError {
                file: relative(dir, &path),
                path: path.clone(),
                expected: expected.to_string(),
                actual,
            };
            let key = (a.id, path.clone());
            let now = stamp(&path).map_err(|e| {
                fail(if e.kind() == std::io::ErrorKind::NotFound {
                    "missing".into()
                } else {
                    format!("unreadable: {e}")
                })
            })?;
            let known = self.lock().get(&key) == Some(&now);
            if !known {
                let actual = ferrotune_model::store::sha256_file(&path)
                    .map_err(|e| fail(format!("unreadable: {e}")))?;
                if !actual.eq_ignore_ascii_case(expected) {
                    self.lock().remove(&key);
                    return Err(fail(actual));
                }
                // The stamp from before hashing: a write during the hash changes it, so the next
                // request hashes again.
                self.lock().insert(key, now.clone());
            }
            if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| path.parent() == Some(dir) && LOADER_FILES.contains(n))
            {
                loader.push((name.to_string(), expected.to_ascii_lowercase()));
            }
            stamps.push((path, now));
        }
        Ok(Verified { cache_digest: crate::cache::combine_digests(&loader), stamps })
    }

    /// After loading: whether every file still has the stamp it was verified with (a change in
    /// between means the loader may have read other bytes than were hashed).
    pub fn unchanged(&self, v: &Verified) -> bool {
        self.changed(v).is_none()
    }

    /// The first file whose stamp moved since it was verified.
    pub fn changed<'v>(&self, v: &'v Verified) -> Option<&'v Path> {
        v.stamps.iter().find(|(p, s)| stamp(p).ok().as_ref() != Some(s)).map(|(p, _)| p.as_path())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, PathBuf), Stamp>> {
        self.passed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A recorded path: absolute as stored, or relative to the artifact's folder.
fn resolve(dir: &Path, recorded: &str) -> PathBuf {
    let p = Path::new(recorded);
    if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotune_govern::{ArtifactKind, FileHash};

    fn record(dir: &Path, relative_paths: bool) -> ArtifactRecord {
        let files = LOADER_FILES
            .iter()
            .map(|n| {
                let p = dir.join(n);
                FileHash {
                    path: if relative_paths { n.to_string() } else { p.display().to_string() },
                    bytes: std::fs::metadata(&p).expect("meta").len(),
                    sha256: ferrotune_model::store::sha256_file(&p).expect("hash"),
                }
            })
            .collect();
        ArtifactRecord {
            id: 7,
            name: "support".into(),
            version: 1,
            kind: ArtifactKind::Adapter,
            path: dir.display().to_string(),
            files,
            run: None,
            base_model: None,
            created: String::new(),
            actor: "t".into(),
            disabled: false,
            disabled_reason: None,
            aliases: vec![],
        }
    }

    fn adapter_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("adapter_config.json"), "{}").expect("write");
        std::fs::write(tmp.path().join("adapter_model.safetensors"), [1u8, 2, 3]).expect("write");
        tmp
    }

    #[test]
    fn recorded_files_pass_and_give_the_same_cache_digest_as_loading_by_path() {
        let tmp = adapter_dir();
        let v = Verifier::default();
        for relative_paths in [false, true] {
            let ok = v.verify(&record(tmp.path(), relative_paths)).expect("verified");
            let by_path =
                crate::cache::digest_files(&crate::cache::adapter_files(tmp.path())).expect("digest");
            assert_eq!(ok.cache_digest, by_path);
            assert!(v.unchanged(&ok));
        }
    }

    #[test]
    fn a_changed_byte_a_missing_file_or_an_unrecorded_loader_file_is_refused_naming_the_file() {
        let tmp = adapter_dir();
        let v = Verifier::default();
        let rec = record(tmp.path(), false);
        let ok = v.verify(&rec).expect("verified");
        // Same size, other bytes: the stamp changes (mtime) or not — either way it is re-hashed
        // once the stamp differs; force a different size to be sure the stamp moves.
        std::fs::write(tmp.path().join("adapter_model.safetensors"), [1u8, 2, 4, 5]).expect("tamper");
        assert!(!v.unchanged(&ok));
        let e = v.verify(&rec).expect_err("tampered");
        assert_eq!(e.file, "adapter_model.safetensors");
        assert_eq!(e.expected, rec.files[1].sha256);
        assert_eq!(
            e.actual,
            ferrotune_model::store::sha256_file(&tmp.path().join("adapter_model.safetensors")).expect("hash")
        );
        std::fs::write(tmp.path().join("adapter_model.safetensors"), [1u8, 2, 3]).expect("restore");
        v.verify(&rec).expect("restored bytes pass again");
        std::fs::remove_file(tmp.path().join("adapter_config.json")).expect("rm");
        let e = v.verify(&rec).expect_err("missing");
        assert_eq!((e.file.as_str(), e.actual.as_str()), ("adapter_config.json", "missing"));
        std::fs::write(tmp.path().join("adapter_config.json"), "{}").expect("restore");
        let mut partial = rec.clone();
        partial.files.remove(0);
        let e = v.verify(&partial).expect_err("unrecorded loader file");
        assert_eq!(e.file, "adapter_config.json");
        assert!(e.expected.contains("not recorded"), "{e:?}");
    }
}
