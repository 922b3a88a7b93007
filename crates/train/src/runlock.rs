//! One trainer per run folder: `train.lock` in the folder, held with an OS advisory lock
//! (`flock` on Unix, through std's `File::try_lock`) for the whole run. The kernel drops the lock
//! when the holder dies, even by SIGKILL, so a lock file left by a killed run never blocks; the
//! file only records the holder's pid for the error a second trainer gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Result, TrainError};

pub const FILE_NAME: &str = "train.lock";

/// Held for the run; dropping it (or the process ending) releases the lock. The file stays: a
/// lock file removed while another process has it open would let a third lock a new one.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Lock `run_dir` (which must exist), or fail with [`TrainError::Locked`] naming the folder
    /// and the holder's pid.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| TrainError::file(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                // The holder may not have written its pid yet: then the error names none.
                let _ = file.read_to_string(&mut text);
                return Err(TrainError::Locked { dir: run_dir.to_path_buf(), pid: text.trim().parse().ok() });
            }
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                eprintln!(
                    "warning: {}: the file system has no advisory locks; nothing stops a second trainer here",
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => return Err(TrainError::file(&path, e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| TrainError::file(&path, e))?;
        Ok(Self { _file: file })
    }
}

/// The holder named in a [`TrainError::Locked`] message.
pub(crate) fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(p) => format!("another `ferrotune train` (pid {p})"),
        None => "another `ferrotune train`".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_run_folder_is_refused_naming_folder_and_pid() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::file("tmp", e))?;
        let first = RunLock::acquire(dir.path())?;
        let err = RunLock::acquire(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        // Released: the next one gets it, though the file (with the old pid) is still there.
        assert!(dir.path().join(FILE_NAME).exists());
        let _again = RunLock::acquire(dir.path())?;
        Ok(())
    }
}
