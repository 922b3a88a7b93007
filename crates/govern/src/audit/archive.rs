//! Retention: entries older than `retention_days` move from `entries.log` into a gzip segment
//! in `archive/`. `leaves.bin` and the checkpoints stay as they are, so proofs and `verify`
//! still cover archived entries (read back from the segments, each checked against the SHA-256
//! in the manifest).
//!
//! Order, under the lock, so that a crash at any point loses nothing: segment (temp, fsync,
//! rename), manifest (same), then `entries.log` rewritten without those lines (temp, fsync,
//! rename, fsync the folder). A crash before the manifest leaves a stray segment file that
//! nothing refers to; a crash after it leaves the lines in both places, which the next look at
//! the files (`store::repair`) recognises and finishes.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use crate::audit::log::AuditLog;
use crate::audit::store::{self, ARCHIVE, ENTRIES, Segment};
use crate::error::Result;

/// `YYYY-MM-DDThh:mm:ssZ` of `days` days ago, comparable as a string with entry times; before
/// the calendar's start (a retention of millennia) the empty string, older than no entry.
fn cutoff(days: u32) -> String {
    let ago = time::Duration::days(i64::from(days));
    time::OffsetDateTime::now_utc().checked_sub(ago).map(crate::recording::rfc3339).unwrap_or_default()
}

#[derive(serde::Deserialize)]
struct TimeOnly {
    time: String,
}

impl AuditLog {
    /// Move entries older than `retention_days` into compressed archive segments.
    ///
    /// Moves the longest run at the head of `entries.log` whose times are all before the
    /// cutoff (a line out of time order stops it there, so indexes stay contiguous); returns
    /// how many entries moved.
    pub fn archive(&self) -> Result<u64> {
        let cutoff = cutoff(self.cfg.retention_days);
        let mut g = self.lock()?;
        let path = self.dir.join(ENTRIES);
        let mut f = File::options().read(true).write(true).open(&path).map_err(store::io(&path))?;
        let len = g.st.seen.map_or(0, |s| s.entries_len);
        let (mut count, mut bytes) = (0u64, 0u64);
        {
            let mut r = BufReader::with_capacity(1 << 20, (&f).take(len));
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = r.read_until(b'\n', &mut line).map_err(store::io(&path))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                match serde_json::from_slice::<TimeOnly>(&line[..n - 1]) {
                    Ok(e) if e.time.as_str() < cutoff.as_str() => {
                        count += 1;
                        bytes += n as u64;
                    }
                    _ => break,
                }
            }
        }
        if count == 0 {
            return Ok(0);
        }
        let first = g.st.archived;
        let last = first + count - 1;
        let name = format!("{first:012}-{last:012}.log.gz");
        let seg_path = self.dir.join(ARCHIVE).join(&name);

        f.seek(SeekFrom::Start(0)).map_err(store::io(&path))?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::copy(&mut (&f).take(bytes), &mut gz).map_err(store::io(&path))?;
        let compressed = gz.finish().map_err(store::io(&seg_path))?;
        let tmp = store::tmp_path(&seg_path);
        let mut out = File::create(&tmp).map_err(store::io(&tmp))?;
        out.write_all(&compressed).and_then(|_| out.sync_all()).map_err(store::io(&tmp))?;
        std::fs::rename(&tmp, &seg_path).map_err(store::io(&seg_path))?;

        let mut manifest = store::load_manifest(&self.dir)?;
        manifest.segments.push(Segment {
            file: name,
            first,
            last,
            sha256: hex::encode(Sha256::digest(&compressed)),
        });
        store::save_manifest(&self.dir, &manifest)?;
        store::sync_dir(&self.dir.join(ARCHIVE))?;

        store::rewrite_tail(&path, &mut f, bytes)?;
        // The files changed shape: the next lock takes a full look (and must find no repair to do).
        g.st.seen = None;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_a_utc_timestamp_days_ago() {
        let c = cutoff(0);
        assert_eq!(c.len(), 20);
        assert!(cutoff(183) < c);
    }
}
