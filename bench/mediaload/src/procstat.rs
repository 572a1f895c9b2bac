//! CPU time and resident memory of a process, from `/proc`.

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime of every thread, in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS, KiB.
    pub rss_kb: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; None if the process
/// is gone or the files are not as expected.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample { cpu_ticks: cpu_ticks(&stat)?, rss_kb: rss_kb(&status)? })
}

/// The whole machine's busy and total CPU time (all cores), in clock
/// ticks, from the first line of `/proc/stat`.
pub fn machine() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    machine_from(&stat)
}

fn machine_from(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_ascii_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_ascii_whitespace().next()?.parse().ok()
}

/// Clock ticks per second (`_SC_CLK_TCK`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// utime + stime: fields 14 and 15, counted after the `)` closing the
/// command name (which may itself hold spaces and parentheses).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11); // fields 3..=13
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_kb(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_ascii_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (rtp engine) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(rss_kb("Name:\tx\nVmRSS:\t  20480 kB\nThreads:\t3\n"), Some(20480));
        assert_eq!(cpu_ticks("garbage"), None);
        let m = "cpu  100 5 50 800 20 1 4 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(machine_from(m), Some((160, 980)));
        assert!(sample(std::process::id()).is_some_and(|s| s.rss_kb > 0));
    }
}
