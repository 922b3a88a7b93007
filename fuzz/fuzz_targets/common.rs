//! What the targets share: a scratch folder per process (the production entry points read
//! files), and the split of one input into a mode byte and parts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A folder for this process's files, removed at exit by nobody: libFuzzer ends with
/// `exit`, so `TempDir`'s drop would not run anyway. In memory (`/dev/shm`) where there is
/// one: on a disk shared with builds, a single unlink sometimes stalled past the 1 s timeout
/// (a timeout of the harness, not of the parser: the inputs replayed in milliseconds).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let builder = tempfile::Builder::new().prefix("ferrotune-fuzz-").clone();
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { builder.tempdir_in(shm) } else { builder.tempdir() };
        dir.or_else(|_| builder.tempdir()).expect("temp dir").keep()
    })
}

/// A fresh empty folder under [`scratch`] (named `name`), for targets that read a folder.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Write `bytes` to `name` under [`scratch`] and return its path.
pub fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

/// The first byte (the mode a target switches on) and the rest.
pub fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

/// `data` cut at each 0xFF byte (never part of UTF-8), as text.
pub fn parts(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xFF).map(|p| String::from_utf8_lossy(p).into_owned()).collect()
}
