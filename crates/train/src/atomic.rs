//! Crash-safe writes of a run folder's pieces. A folder (`best/`, `adapter/`, `model/`,
//! `checkpoints/step-N/`) is filled as a hidden sibling `.NAME.tmp`, fsync'ed, and swapped in
//! without a moment where neither version exists: the old one is renamed to `.NAME.old`, the
//! new one renamed in, the parent fsync'ed, then the old one removed. A file goes through
//! `.NAME.tmp` + fsync + rename. [`recover`] repairs what a `kill -9` (or power loss) between
//! those renames leaves: the aside copy comes back if the folder is missing, and is dropped if
//! the new one made it. The run lock (`runlock.rs`) makes the fixed temp names safe: one writer
//! per run folder.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::crash;
use crate::error::{Result, TrainError};

fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let parent = parent_of(dest);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dir".into());
    parent.join(format!(".{name}.{suffix}"))
}

fn parent_of(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a folder, so the renames inside it survive a power loss (a file's own fsync does not
/// cover its directory entry).
fn sync_dir(dir: &Path) -> Result<()> {
    // Opening a folder for fsync is a Unix idiom; elsewhere the rename is what we can do.
    if cfg!(unix) {
        File::open(dir).and_then(|f| f.sync_all()).map_err(|e| TrainError::file(dir, e))?;
    }
    Ok(())
}

/// fsync every file under `dir`, then the folders bottom-up.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| TrainError::file(dir, e))? {
        let p = e.map_err(|e| TrainError::file(dir, e))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p).and_then(|f| f.sync_all()).map_err(|e| TrainError::file(&p, e))?;
        }
    }
    sync_dir(dir)
}

fn remove_any(p: &Path) -> Result<()> {
    let r = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
    r.map_err(|e| TrainError::file(p, e))
}

/// Write the folder `dest` as a whole: `fill` writes into an empty temp sibling, which replaces
/// `dest` (if any) only once complete and on disk. `point` names the fault-injection points
/// `POINT-fill` (new folder complete, nothing renamed) and `POINT-swap` (old folder aside, new
/// not yet in) for the crash tests.
pub fn write_dir(dest: &Path, point: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = parent_of(dest);
    if !parent.exists() {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::file(parent, e))?;
        // The new folder's own entry (`checkpoints/` in the run folder) must survive too.
        if let Some(grand) = parent.parent().filter(|g| !g.as_os_str().is_empty()) {
            sync_dir(grand)?;
        }
    }
    recover_dir(dest)?;
    let tmp = sibling(dest, "tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::file(&tmp, e))?;
    if let Err(e) = fill(&tmp).and_then(|()| sync_tree(&tmp)) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    crash::point(&format!("{point}-fill"));
    if dest.exists() {
        let aside = sibling(dest, "old");
        std::fs::rename(dest, &aside).map_err(|e| TrainError::file(dest, e))?;
        crash::point(&format!("{point}-swap"));
        std::fs::rename(&tmp, dest).map_err(|e| TrainError::file(dest, e))?;
        sync_dir(parent)?;
        std::fs::remove_dir_all(&aside).map_err(|e| TrainError::file(&aside, e))?;
    } else {
        std::fs::rename(&tmp, dest).map_err(|e| TrainError::file(dest, e))?;
        sync_dir(parent)?;
    }
    Ok(())
}

/// Write the file `dest` through a temp sibling that `fill` writes (by path), fsync'ed and
/// renamed over `dest`. `point` names the fault-injection point between fsync and rename.
pub fn write_file_with(dest: &Path, point: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = parent_of(dest);
    let tmp = sibling(dest, "tmp");
    if let Err(e) = fill(&tmp)
        .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| TrainError::file(&tmp, e)))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    crash::point(point);
    std::fs::rename(&tmp, dest).map_err(|e| TrainError::file(dest, e))?;
    sync_dir(parent)
}

/// [`write_file_with`] for bytes in memory.
pub fn write_file(dest: &Path, point: &str, bytes: &[u8]) -> Result<()> {
    write_file_with(dest, point, |tmp| {
        let mut f = File::create(tmp).map_err(|e| TrainError::file(tmp, e))?;
        f.write_all(bytes).map_err(|e| TrainError::file(tmp, e))
    })
}

/// Delete the folder `dest` so that a kill midway leaves no partial folder under its name (a
/// half-deleted checkpoint would pass for a complete one): it is renamed to `.NAME.del` first,
/// which [`recover`] finishes removing.
pub fn remove_dir(dest: &Path) -> Result<()> {
    let doomed = sibling(dest, "del");
    std::fs::rename(dest, &doomed).map_err(|e| TrainError::file(dest, e))?;
    crash::point("remove");
    std::fs::remove_dir_all(&doomed).map_err(|e| TrainError::file(&doomed, e))
}

/// Repair `dest` after a crash inside [`write_dir`]: the aside copy is restored when `dest` is
/// missing (killed between the two renames) and removed when `dest` is there (killed before the
/// clean-up); a temp folder is always dropped (its writer died), and so is a `.NAME.del` that
/// [`remove_dir`] did not finish. Returns whether anything was repaired.
pub fn recover_dir(dest: &Path) -> Result<bool> {
    let aside = sibling(dest, "old");
    let tmp = sibling(dest, "tmp");
    let mut repaired = false;
    if aside.is_dir() {
        if dest.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| TrainError::file(&aside, e))?;
        } else {
            std::fs::rename(&aside, dest).map_err(|e| TrainError::file(dest, e))?;
            sync_dir(parent_of(dest))?;
        }
        repaired = true;
    }
    for leftover in [tmp, sibling(dest, "del")] {
        if leftover.exists() {
            remove_any(&leftover)?;
            repaired = true;
        }
    }
    Ok(repaired)
}

/// Repair every folder and file in `dir` that a crash left mid-write (see [`recover_dir`]);
/// also removes the `.NAME.tmp-PID` folders of earlier versions. Returns what was repaired.
pub fn recover(dir: &Path) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    let mut repaired = Vec::new();
    for name in names {
        let Some(hidden) = name.strip_prefix('.') else {
            continue;
        };
        if let Some(base) = [".old", ".tmp", ".del"].iter().find_map(|suffix| hidden.strip_suffix(suffix)) {
            let dest = dir.join(base);
            if recover_dir(&dest)? {
                repaired.push(dest);
            }
        } else if let Some((base, pid)) = hidden.rsplit_once(".tmp-")
            && !base.is_empty()
            && !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
        {
            let p = dir.join(&name);
            remove_any(&p)?;
            repaired.push(p);
        }
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) -> Result<()> {
        std::fs::create_dir_all(p).map_err(|e| TrainError::file(p, e))?;
        std::fs::write(p.join("w.txt"), text).map_err(|e| TrainError::file(p, e))
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p.join("w.txt")).unwrap_or_default()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_folder_is_replaced_whole_and_no_temp_or_aside_stays() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tmp", e))?;
        let dest = dir.path().join("best");
        write_dir(&dest, "t", |d| write(d, "one"))?;
        assert_eq!(read(&dest), "one");
        write_dir(&dest, "t", |d| write(d, "two"))?;
        assert_eq!(read(&dest), "two");
        assert_eq!(names(dir.path()), vec!["best"]);
        Ok(())
    }

    #[test]
    fn a_failed_fill_leaves_the_old_folder_untouched() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tmp", e))?;
        let dest = dir.path().join("adapter");
        write_dir(&dest, "t", |d| write(d, "old"))?;
        let r = write_dir(&dest, "t", |d| {
            write(d, "half")?;
            Err(TrainError::file(d, "disk full"))
        });
        assert!(r.is_err());
        assert_eq!(read(&dest), "old");
        assert_eq!(names(dir.path()), vec!["adapter"]);
        Ok(())
    }

    /// Killed between the two renames: only `.best.old` (and the new temp) exist.
    #[test]
    fn an_aside_copy_comes_back_when_the_folder_is_missing() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tmp", e))?;
        write(&dir.path().join(".best.old"), "old")?;
        write(&dir.path().join(".best.tmp"), "new, maybe half")?;
        let repaired = recover(dir.path())?;
        assert_eq!(repaired, vec![dir.path().join("best")]);
        assert_eq!(read(&dir.path().join("best")), "old");
        assert_eq!(names(dir.path()), vec!["best"]);
        Ok(())
    }

    /// Killed after the swap, before the clean-up: the new folder stays, the aside goes.
    #[test]
    fn an_aside_copy_is_dropped_when_the_new_folder_made_it() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tmp", e))?;
        write(&dir.path().join(".adapter.old"), "old")?;
        write(&dir.path().join("adapter"), "new")?;
        write(&dir.path().join(".step-4.tmp-1234"), "from an older version")?;
        write(&dir.path().join(".step-2.del"), "pruned, half deleted")?;
        std::fs::write(dir.path().join(".config.json.tmp"), "{").map_err(|e| TrainError::file("w", e))?;
        recover(dir.path())?;
        assert_eq!(read(&dir.path().join("adapter")), "new");
        assert_eq!(names(dir.path()), vec!["adapter"]);
        // A second pass has nothing left to do.
        assert!(recover(dir.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn a_file_is_replaced_through_a_temp_that_does_not_stay() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tmp", e))?;
        let p = dir.path().join("config.json");
        write_file(&p, "t", b"one")?;
        write_file(&p, "t", b"two")?;
        assert_eq!(std::fs::read_to_string(&p).map_err(|e| TrainError::file(&p, e))?, "two");
        assert_eq!(names(dir.path()), vec!["config.json"]);
        Ok(())
    }
}
