//! The log's files (layout: the top of `log.rs`): noticing other writers, repairing an
//! interrupted write, streaming the lines (archive segments first), the checkpoint notes.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::audit::log::State;
use crate::audit::merkle::{self, Frontier, Hash};
use crate::error::{GovernError, Result};

pub const ENTRIES: &str = "entries.log";
pub const LEAVES: &str = "leaves.bin";
pub const CHECKPOINTS: &str = "checkpoints";
pub const ARCHIVE: &str = "archive";
pub const MANIFEST: &str = "manifest.json";
pub const LOCK: &str = "lock";
pub const ORIGIN: &str = "origin";
pub const VERIFIER: &str = "verifier.key";

pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GovernError + '_ {
    move |source| GovernError::Io { path: path.to_path_buf(), error: source }
}

pub fn create_dirs(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true).mode(0o700);
    for d in [dir.to_path_buf(), dir.join(CHECKPOINTS), dir.join(ARCHIVE)] {
        b.create(&d).map_err(io(&d))?;
    }
    Ok(())
}

/// Write to a temp file beside `path`, fsync, rename over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

pub fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A position in the files, for messages: `entries.log` line 12, or a segment's line.
pub struct Where<'a> {
    pub path: &'a Path,
    pub name: &'a str,
    pub line: u64,
}

impl Where<'_> {
    pub fn bad(&self, reason: String) -> GovernError {
        GovernError::BadFile { path: self.path.to_path_buf(), field: format!("line {}", self.line), reason }
    }
}

// ---- archive manifest ----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    /// File name in `archive/`.
    pub file: String,
    /// Indexes of its first and last entry (inclusive).
    pub first: u64,
    pub last: u64,
    /// SHA-256 of the `.gz` file, hex.
    pub sha256: String,
}

impl Manifest {
    /// Entries `0..archived()` live in segments.
    pub fn archived(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.last + 1)
    }
}

pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(ARCHIVE).join(MANIFEST)
}

pub fn load_manifest(dir: &Path) -> Result<Manifest> {
    let path = manifest_path(dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
        Err(e) => return Err(io(&path)(e)),
    };
    let bad = |reason: String| GovernError::BadFile { path: path.clone(), field: "segments".into(), reason };
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let mut next = 0;
    for s in &m.segments {
        if s.first != next || s.last < s.first || s.file.contains('/') {
            return Err(bad(format!("segment {} does not continue at entry {next}", s.file)));
        }
        next = s.last + 1;
    }
    Ok(m)
}

pub fn save_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = manifest_path(dir);
    let mut text = serde_json::to_vec_pretty(m).map_err(|e| GovernError::BadFile {
        path: path.clone(),
        field: "segments".into(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    write_atomic(&path, &text)
}

// ---- checkpoints ----

pub fn note_path(dir: &Path, size: u64) -> PathBuf {
    dir.join(CHECKPOINTS).join(format!("{size:012}.note"))
}

pub fn checkpoint_sizes(dir: &Path) -> Result<BTreeSet<u64>> {
    let cdir = dir.join(CHECKPOINTS);
    let mut sizes = BTreeSet::new();
    for e in std::fs::read_dir(&cdir).map_err(io(&cdir))? {
        let name = e.map_err(io(&cdir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(digits) =
            name.strip_suffix(".note").filter(|d| d.len() == 12 && d.bytes().all(|b| b.is_ascii_digit()))
            && let Ok(size) = digits.parse()
        {
            sizes.insert(size);
        }
    }
    Ok(sizes)
}

pub fn read_note(dir: &Path, size: u64) -> Result<String> {
    let path = note_path(dir, size);
    std::fs::read_to_string(&path).map_err(io(&path))
}

/// Store a note without ever replacing one: written to a temp file, then hard-linked into place
/// (which fails when the name exists). The same note again is fine; a different one is refused.
pub fn write_note(dir: &Path, size: u64, note: &str) -> Result<()> {
    let path = note_path(dir, size);
    let tmp = tmp_path(&path);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(note.as_bytes()).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_dir(&dir.join(CHECKPOINTS)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_to_string(&path).map_err(io(&path))? == note {
                return Ok(());
            }
            Err(GovernError::Refused(format!(
                "{}: a different checkpoint of size {size} is stored already (a rewritten history?); not overwritten",
                path.display()
            )))
        }
        Err(e) => Err(io(&path)(e)),
    }
}

// ---- entries.log + leaves.bin ----

/// `entries.log`'s inode and length, `leaves.bin`'s length and the manifest's, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub ino: u64,
    pub entries_len: u64,
    pub leaves_len: u64,
    pub manifest_len: u64,
}

fn look(dir: &Path) -> Result<Seen> {
    let entries = dir.join(ENTRIES);
    let leaves = dir.join(LEAVES);
    let stat = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(p)(e)),
    };
    let e = stat(&entries)?;
    let l = stat(&leaves)?;
    let m = stat(&manifest_path(dir))?;
    Ok(Seen {
        ino: e.as_ref().map_or(0, |m| m.ino()),
        entries_len: e.map_or(0, |m| m.len()),
        leaves_len: l.map_or(0, |m| m.len()),
        manifest_len: m.map_or(0, |m| m.len()),
    })
}

/// Catch up with the files (the caller holds the file lock): another process's appends are
/// counted from the bytes it added; anything else (first look, archive, a torn write, a
/// truncation) gets the full look of `repair`. Returns the repair's warning, if any.
pub fn sync(dir: &Path, st: &mut State) -> Result<Option<String>> {
    let now = look(dir)?;
    let mut note = None;
    if st.seen != Some(now) {
        let grown = match st.seen {
            Some(s)
                if s.ino == now.ino
                    && s.manifest_len == now.manifest_len
                    && now.entries_len > s.entries_len =>
            {
                appended_lines(dir, s.entries_len, now.entries_len)?
                    .filter(|k| now.leaves_len == 32 * (st.size + k))
            }
            _ => None,
        };
        let now = match grown {
            Some(k) => {
                st.size += k;
                now
            }
            None => {
                let r = repair(dir)?;
                st.size = r.size;
                st.archived = r.archived;
                note = r.note;
                r.seen
            }
        };
        st.seen = Some(now);
        st.recheck_frontier = true;
    }
    let cdir = dir.join(CHECKPOINTS);
    let stamp = mtime(&cdir);
    if stamp.is_none() || stamp != st.cps_stamp {
        st.cps = checkpoint_sizes(dir)?;
        st.cps_stamp = stamp;
        if let Some(t) = st.cps.last().and_then(|&s| mtime(&note_path(dir, s))) {
            st.last_cp_time = st.last_cp_time.max(t);
        }
    }
    Ok(note)
}

/// The number of lines in `entries.log[from..to]`, or `None` when they do not end in `\n`.
fn appended_lines(dir: &Path, from: u64, to: u64) -> Result<Option<u64>> {
    let path = dir.join(ENTRIES);
    let mut f = File::open(&path).map_err(io(&path))?;
    f.seek(SeekFrom::Start(from)).map_err(io(&path))?;
    let mut bytes = Vec::with_capacity((to - from) as usize);
    f.take(to - from).read_to_end(&mut bytes).map_err(io(&path))?;
    if bytes.len() as u64 != to - from || bytes.last() != Some(&b'\n') {
        return Ok(None);
    }
    Ok(Some(bytes.iter().filter(|&&b| b == b'\n').count() as u64))
}

struct Repaired {
    size: u64,
    archived: u64,
    seen: Seen,
    note: Option<String>,
}

/// The full look: cut a torn last line, finish an interrupted archive, and bring `leaves.bin`
/// to the number of entries (cutting extra leaves, hashing missing ones from the lines).
fn repair(dir: &Path) -> Result<Repaired> {
    let manifest = load_manifest(dir)?;
    let archived = manifest.archived();
    let path = dir.join(ENTRIES);
    let created = !path.exists() || !dir.join(LEAVES).exists();
    let mut f =
        File::options().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
    let mut len = f.metadata().map_err(io(&path))?.len();
    let mut notes = Vec::new();
    let complete = complete_len(&mut f, len).map_err(io(&path))?;
    if complete < len {
        f.set_len(complete).and_then(|_| f.sync_all()).map_err(io(&path))?;
        notes.push(format!(
            "audit log: removed a torn last record ({} bytes) left by an interrupted write",
            len - complete
        ));
        len = complete;
    }
    let mut lines = count_lines(&mut f, len).map_err(io(&path))?;

    let leaves_path = dir.join(LEAVES);
    let lf = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&leaves_path)
        .map_err(io(&leaves_path))?;
    let mut n0 = lf.metadata().map_err(io(&leaves_path))?.len() / 32;

    // Archiving writes the segment and the manifest before it rewrites entries.log: a crash in
    // between leaves the last segment's entries at the head of entries.log too.
    if let Some(seg) = manifest.segments.last().filter(|_| archived + lines != n0) {
        let count = seg.last - seg.first + 1;
        if lines >= count {
            let head = merkle::leaf_hash(&first_line(&mut f).map_err(io(&path))?);
            if read_leaf(&lf, seg.first) == Some(head) && read_leaf(&lf, archived) != Some(head) {
                let off = offset_after(&mut f, count).map_err(io(&path))?;
                f = rewrite_tail(&path, &mut f, off)?;
                len -= off;
                lines -= count;
                notes.push(format!(
                    "audit log: finished an interrupted archive (entries {}..={} were in {} too)",
                    seg.first, seg.last, seg.file
                ));
            }
        }
    }

    let size = archived + lines;
    let leaves_len = lf.metadata().map_err(io(&leaves_path))?.len();
    if n0 != size || leaves_len != 32 * n0 {
        let before = n0;
        n0 = n0.min(size);
        lf.set_len(32 * n0).map_err(io(&leaves_path))?;
        if n0 < size {
            let snap = Snapshot {
                dir: dir.to_path_buf(),
                size,
                archived,
                manifest: manifest.clone(),
                entries: f.try_clone().map_err(io(&path))?,
                entries_len: len,
                cps: BTreeSet::new(),
            };
            let mut hashes = Vec::with_capacity(((size - n0) * 32) as usize);
            scan(&snap, n0, &mut |_, _, line| {
                hashes.extend_from_slice(&merkle::leaf_hash(line));
                Ok(true)
            })?;
            (&lf).seek(SeekFrom::End(0)).and_then(|_| (&lf).write_all(&hashes)).map_err(io(&leaves_path))?;
        }
        lf.sync_all().map_err(io(&leaves_path))?;
        if notes.is_empty() {
            notes.push(format!(
                "audit log: leaves.bin held {before} leaf hashes for {size} entries (an interrupted write); brought it in line"
            ));
        }
    }
    if created {
        sync_dir(dir)?;
    }
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(Repaired { size, archived, seen: look(dir)?, note })
}

/// The length up to and including the last `\n`.
fn complete_len(f: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(p) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + p as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn count_lines(f: &mut File, len: u64) -> std::io::Result<u64> {
    f.seek(SeekFrom::Start(0))?;
    let mut r = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

fn first_line(f: &mut File) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(0))?;
    let mut line = Vec::new();
    BufReader::new(&*f).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// The byte offset just past the first `count` lines.
pub fn offset_after(f: &mut File, count: u64) -> std::io::Result<u64> {
    f.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 20, &*f);
    let (mut off, mut line) = (0u64, Vec::new());
    for _ in 0..count {
        line.clear();
        off += r.read_until(b'\n', &mut line)? as u64;
    }
    Ok(off)
}

/// Replace `path` (open as `f`) by its bytes from `off` on: temp file, fsync, rename, fsync the
/// folder. Returns the new file, open read + write.
pub fn rewrite_tail(path: &Path, f: &mut File, off: u64) -> Result<File> {
    let tmp = tmp_path(path);
    let mut out = File::create(&tmp).map_err(io(&tmp))?;
    f.seek(SeekFrom::Start(off)).map_err(io(path))?;
    std::io::copy(f, &mut out).and_then(|_| out.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    File::options().read(true).write(true).open(path).map_err(io(path))
}

fn read_leaf(f: &File, index: u64) -> Option<Hash> {
    use std::os::unix::fs::FileExt;
    let mut h: Hash = [0; 32];
    f.read_exact_at(&mut h, index * 32).ok().map(|_| h)
}

/// Leaf hashes `0..n` from `leaves.bin` (fewer when the file is shorter).
pub fn read_leaves(dir: &Path, n: u64) -> Result<Vec<Hash>> {
    read_leaves_from(dir, 0, n)
}

pub fn read_leaves_from(dir: &Path, from: u64, to: u64) -> Result<Vec<Hash>> {
    let path = dir.join(LEAVES);
    let mut f = File::open(&path).map_err(io(&path))?;
    f.seek(SeekFrom::Start(from * 32)).map_err(io(&path))?;
    let mut bytes = Vec::with_capacity((to.saturating_sub(from) * 32) as usize);
    f.take(to.saturating_sub(from) * 32).read_to_end(&mut bytes).map_err(io(&path))?;
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h: Hash = [0; 32];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// Bring the in-memory frontier to `st.size` from `leaves.bin` (rebuilt from the start when
/// the files changed under it in a way that is not an append).
pub fn catch_up(dir: &Path, st: &mut State) -> Result<()> {
    if st.recheck_frontier {
        let n = st.frontier.size();
        if n > st.size || (n > 0 && read_leaves_from(dir, n - 1, n)?.first() != Some(&st.frontier_last)) {
            st.frontier = Frontier::default();
        }
        st.recheck_frontier = false;
    }
    while st.frontier.size() < st.size {
        let from = st.frontier.size();
        let to = st.size.min(from + (1 << 16));
        let leaves = read_leaves_from(dir, from, to)?;
        if leaves.len() as u64 != to - from {
            st.seen = None;
            return Err(GovernError::BadFile {
                path: dir.join(LEAVES),
                field: format!("leaf {}", from + leaves.len() as u64),
                reason: "shorter than the log (changed while the lock was held?)".into(),
            });
        }
        for h in leaves {
            st.push_leaf(h);
        }
    }
    Ok(())
}

/// Write one batch: the lines in one `write_all`, then the leaf hashes, then fsync both.
pub fn append_batch(dir: &Path, st: &mut State, lines: &[u8], leaves: &[u8]) -> Result<()> {
    let (entries, leaves_path) = (dir.join(ENTRIES), dir.join(LEAVES));
    let written = (|| {
        let mut e = File::options().append(true).open(&entries).map_err(io(&entries))?;
        e.write_all(lines).map_err(io(&entries))?;
        let mut l = File::options().append(true).open(&leaves_path).map_err(io(&leaves_path))?;
        l.write_all(leaves).map_err(io(&leaves_path))?;
        e.sync_data().map_err(io(&entries))?;
        l.sync_data().map_err(io(&leaves_path))
    })();
    match (written, st.seen.as_mut()) {
        (Ok(()), Some(seen)) => {
            seen.entries_len += lines.len() as u64;
            seen.leaves_len += leaves.len() as u64;
            st.size += (leaves.len() / 32) as u64;
            Ok(())
        }
        (r, _) => {
            // A half-written batch is cut by the next sync's repair.
            st.seen = None;
            r
        }
    }
}

/// A consistent view of the log to read without the lock: `entries.log` only grows, archiving
/// replaces it by rename (this handle keeps the old file), segments never change.
pub struct Snapshot {
    pub dir: PathBuf,
    pub size: u64,
    pub archived: u64,
    pub manifest: Manifest,
    pub entries: File,
    pub entries_len: u64,
    /// Stored checkpoint sizes at the time.
    pub cps: BTreeSet<u64>,
}

pub fn snapshot(dir: &Path, st: &State) -> Result<Snapshot> {
    let path = dir.join(ENTRIES);
    let entries = File::open(&path).map_err(io(&path))?;
    let seen = st.seen.ok_or_else(|| GovernError::Refused(format!("{}: not synced", dir.display())))?;
    Ok(Snapshot {
        dir: dir.to_path_buf(),
        size: st.size,
        archived: st.archived,
        manifest: load_manifest(dir)?,
        entries,
        entries_len: seen.entries_len,
        cps: checkpoint_sizes(dir)?,
    })
}

/// What `scan` calls per entry: (index, where, line without `\n`) → keep going?
pub type LineFn<'f> = dyn FnMut(u64, &Where, &[u8]) -> Result<bool> + 'f;

/// Call `f(index, where, line)` for every entry from index `from` on (archive segments, then
/// `entries.log`), the line without its `\n`; `f` returns false to stop.
pub fn scan(snap: &Snapshot, from: u64, f: &mut LineFn<'_>) -> Result<()> {
    let mut line = Vec::with_capacity(1024);
    for seg in &snap.manifest.segments {
        if seg.last < from {
            continue;
        }
        let path = snap.dir.join(ARCHIVE).join(&seg.file);
        let name = format!("{ARCHIVE}/{}", seg.file);
        let file = File::open(&path).map_err(io(&path))?;
        let mut r = BufReader::with_capacity(1 << 20, flate2::read::GzDecoder::new(BufReader::new(file)));
        let mut i = seg.first;
        loop {
            line.clear();
            let at = Where { path: &path, name: &name, line: i - seg.first + 1 };
            if r.read_until(b'\n', &mut line).map_err(|e| at.bad(format!("cannot decompress: {e}")))? == 0 {
                break;
            }
            if line.pop() != Some(b'\n') || i > seg.last {
                return Err(at.bad(format!(
                    "the segment should hold entries {}..={} only, one per line",
                    seg.first, seg.last
                )));
            }
            if i >= from && !f(i, &at, &line)? {
                return Ok(());
            }
            i += 1;
        }
        if i != seg.last + 1 {
            let at = Where { path: &path, name: &name, line: i - seg.first + 1 };
            return Err(at.bad(format!(
                "the segment ends at entry {i}; {} says it holds entries up to {}",
                MANIFEST, seg.last
            )));
        }
    }
    let path = snap.dir.join(ENTRIES);
    (&snap.entries).seek(SeekFrom::Start(0)).map_err(io(&path))?;
    let mut r = BufReader::with_capacity(1 << 20, (&snap.entries).take(snap.entries_len));
    let mut i = snap.archived;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).map_err(io(&path))? == 0 {
            return Ok(());
        }
        let at = Where { path: &path, name: ENTRIES, line: i - snap.archived + 1 };
        if line.pop() != Some(b'\n') {
            return Err(at.bad("no newline at the end (a torn write)".into()));
        }
        if i >= from && !f(i, &at, &line)? {
            return Ok(());
        }
        i += 1;
    }
}
