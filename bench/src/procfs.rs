//! Process figures from `/proc`: peak and current RSS, CPU time, load average.

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux reports them in USER_HZ, which
/// is 100 on every architecture the kernel exposes to user space.
const USER_HZ: f64 = 100.0;

/// Memory and CPU of one process at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct ProcSample {
    /// Peak resident set size since the process started (`VmHWM`), KiB.
    pub vm_hwm_kib: u64,
    /// Current resident set size (`VmRSS`), KiB.
    pub vm_rss_kib: u64,
    /// User plus system CPU time of all its threads, seconds.
    pub cpu_seconds: f64,
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; `None` when the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        vm_hwm_kib: status_field(&status, "VmHWM:")?,
        vm_rss_kib: status_field(&status, "VmRSS:")?,
        cpu_seconds: cpu_seconds(&stat)?,
    })
}

/// The same for this process.
pub fn sample_self() -> Option<ProcSample> {
    sample(std::process::id())
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The 1-minute load average, or -1 when unreadable.
pub fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(-1.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 0 0";
        assert_eq!(cpu_seconds(line), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample_self().unwrap();
        assert!(s.vm_hwm_kib >= s.vm_rss_kib / 2 && s.vm_rss_kib > 0);
        assert!(s.cpu_seconds >= 0.0);
    }
}
