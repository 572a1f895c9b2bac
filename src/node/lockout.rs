//! Lockout of sources that keep failing authentication (password guessing).
//! Sans-IO: time is an argument (Unix seconds).

use std::collections::HashMap;
use std::hash::Hash;

/// Lockout policy.
#[derive(Debug, Clone, Copy)]
pub struct LockoutConfig {
    /// Failures within `window_s` that lock a source out.
    pub max_failures: u32,
    /// Window over which failures are counted, seconds.
    pub window_s: u64,
    /// How long a source stays locked out, seconds.
    pub lock_s: u64,
    /// Most sources tracked at once (memory bound under a spray attack).
    pub max_tracked: usize,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self { max_failures: 10, window_s: 60, lock_s: 300, max_tracked: 100_000 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: u64,
    locked_until: u64,
}

/// Failure counts per key: a source address, or a (source, user) pair so
/// one misconfigured phone does not lock out every phone behind its NAT.
#[derive(Debug)]
pub struct Lockout<K = std::net::IpAddr> {
    config: LockoutConfig,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Lockout<K> {
    /// An empty table.
    pub fn new(config: LockoutConfig) -> Self {
        Self { config, entries: HashMap::new() }
    }

    /// Whether `source` is locked out at `now`; `Some(seconds left)` if so.
    pub fn locked(&self, source: &K, now: u64) -> Option<u64> {
        self.entries.get(source).filter(|e| e.locked_until > now).map(|e| e.locked_until - now)
    }

    /// Records a failure; returns true when this failure locks the source.
    pub fn record_failure(&mut self, source: &K, now: u64) -> bool {
        if self.entries.len() >= self.config.max_tracked && !self.entries.contains_key(source) {
            let (window, lock) = (self.config.window_s, self.config.lock_s);
            self.entries.retain(|_, e| e.locked_until > now || now.saturating_sub(e.window_start) < window.max(lock));
            if self.entries.len() >= self.config.max_tracked {
                return false;
            }
        }
        let cfg = self.config;
        let e = self.entries.entry(source.clone()).or_insert(Entry { failures: 0, window_start: now, locked_until: 0 });
        if now.saturating_sub(e.window_start) >= cfg.window_s {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures >= cfg.max_failures && e.locked_until <= now {
            e.locked_until = now + cfg.lock_s;
            e.failures = 0;
            e.window_start = now;
            return true;
        }
        false
    }

    /// A success clears the source's failures.
    pub fn record_success(&mut self, source: &K) {
        self.entries.remove(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const NOW: u64 = 1_000_000;

    #[test]
    fn locks_at_the_tenth_failure_and_releases_at_lock_end() {
        let mut l: Lockout = Lockout::new(LockoutConfig::default());
        for i in 0..9 {
            assert!(!l.record_failure(&IP, NOW + i), "failure {i}");
        }
        assert_eq!(l.locked(&IP, NOW + 9), None);
        assert!(l.record_failure(&IP, NOW + 9), "tenth failure locks");
        assert_eq!(l.locked(&IP, NOW + 9), Some(300));
        assert_eq!(l.locked(&IP, NOW + 9 + 299), Some(1));
        assert_eq!(l.locked(&IP, NOW + 9 + 300), None, "released exactly at the end");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut l: Lockout = Lockout::new(LockoutConfig::default());
        for i in 0..9 {
            l.record_failure(&IP, NOW + i);
        }
        assert!(!l.record_failure(&IP, NOW + 60), "window restarted");
        assert_eq!(l.locked(&IP, NOW + 60), None);
    }

    #[test]
    fn success_clears() {
        let mut l: Lockout = Lockout::new(LockoutConfig::default());
        for i in 0..9 {
            l.record_failure(&IP, NOW + i);
        }
        l.record_success(&IP);
        assert!(!l.record_failure(&IP, NOW + 10));
    }

    #[test]
    fn table_is_bounded() {
        let mut l: Lockout = Lockout::new(LockoutConfig { max_tracked: 2, ..Default::default() });
        l.record_failure(&IpAddr::V4([10, 0, 0, 1].into()), NOW);
        l.record_failure(&IpAddr::V4([10, 0, 0, 2].into()), NOW);
        l.record_failure(&IpAddr::V4([10, 0, 0, 3].into()), NOW);
        assert!(l.entries.len() <= 2);
    }
}
