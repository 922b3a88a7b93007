//! Whether the process that began a run is still alive: the run row keeps its host, pid and the
//! pid's start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot), because a pid alone
//! is reused by the kernel after the process dies.

use std::sync::OnceLock;

/// This machine's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `unknown`).
pub fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| "unknown".into())
    })
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), `None` when there is no
/// such process (or no procfs).
pub fn start_time(pid: u32) -> Option<String> {
    stat(pid).map(|(_, start)| start)
}

/// (state, start time) from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 is the command in parentheses and may itself hold spaces or ')': fields 3.. start
    // after the last ')'.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((rest.first()?.to_string(), rest.get(22 - 3)?.to_string()))
}

/// A run recorded as running on this host whose process is gone or is another process now.
/// Runs on other hosts cannot be checked from here and stay `running`.
pub fn is_abandoned(run_host: &str, pid: u32, pid_start: Option<&str>) -> bool {
    if run_host != host() || pid == 0 {
        return false;
    }
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return true;
    }
    match (stat(pid), pid_start) {
        // A killed process its parent has not reaped yet: dead all the same.
        (Some((state, _)), _) if state == "Z" || state == "X" => true,
        (Some((_, now)), Some(then)) => now != then,
        // A zombie or a process we may not read: alive as far as we can tell.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_abandoned_and_its_start_time_is_read() {
        let pid = std::process::id();
        let start = start_time(pid).expect("own /proc/<pid>/stat");
        assert!(start.chars().all(|c| c.is_ascii_digit()), "{start}");
        assert!(!is_abandoned(host(), pid, Some(&start)));
        assert!(is_abandoned(host(), pid, Some("1")), "a different start time means the pid was reused");
        assert!(!is_abandoned("some-other-host", pid, Some("1")), "other hosts cannot be checked");
    }
}
