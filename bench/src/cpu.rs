//! CPU time per component, from `/proc`.
//!
//! Sender and receiver run in one process for the end-to-end harness, each
//! on its own tokio runtime whose threads carry the component's name. The
//! kernel keeps user and system time per thread, so summing
//! `/proc/self/task/*/stat` by thread-name prefix splits the process's CPU
//! between sender, receiver and harness without any instrumentation in the
//! code under test. The broker is a separate process, read from
//! `/proc/PID/stat`. Threads that exited between two samples are only in
//! the process total; the difference is reported as "other".

use std::collections::BTreeMap;
use std::time::Duration;

/// CPU time consumed, by component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Live threads, summed by the prefix they matched (or "other").
    pub threads: BTreeMap<String, Duration>,
    /// The whole process, exited threads included.
    pub process: Duration,
    /// The broker process, when a pid was given and it is readable.
    pub broker: Option<Duration>,
    /// Every CPU of the machine, busy time (all processes, `/proc/stat`):
    /// what neither this process nor the broker used was someone else's
    /// load, which makes a disturbed run visible in its own report.
    pub machine: Duration,
}

impl CpuSample {
    /// CPU time of the component named `prefix`.
    pub fn thread_group(&self, prefix: &str) -> Duration {
        self.threads.get(prefix).copied().unwrap_or_default()
    }

    /// What was used between `earlier` and `self`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let mut threads = self.threads.clone();
        for (k, v) in &mut threads {
            *v = v.saturating_sub(earlier.thread_group(k));
        }
        Self {
            threads,
            process: self.process.saturating_sub(earlier.process),
            broker: match (self.broker, earlier.broker) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b)),
                (a, _) => a,
            },
            machine: self.machine.saturating_sub(earlier.machine),
        }
    }
}

/// Read the CPU time of this process's threads, grouped by the first
/// prefix of `prefixes` their name starts with, and of `broker`.
pub fn sample(prefixes: &[&str], broker: Option<u32>) -> CpuSample {
    let tick = clock_tick();
    let mut threads: BTreeMap<String, Duration> = prefixes
        .iter()
        .map(|p| ((*p).to_owned(), Duration::ZERO))
        .collect();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, ticks)) = parse_stat(&text) else {
                continue;
            };
            let group = prefixes
                .iter()
                .find(|p| comm.starts_with(**p))
                .map_or("other", |p| *p);
            *threads.entry(group.to_owned()).or_default() += tick * ticks;
        }
    }
    let read = |path: String| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| parse_stat(&t))
            .map(|(_, ticks)| tick * ticks)
    };
    CpuSample {
        threads,
        process: read("/proc/self/stat".to_owned()).unwrap_or_default(),
        broker: broker.and_then(|pid| read(format!("/proc/{pid}/stat"))),
        machine: std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| machine_busy(&t))
            .map(|ticks| tick * ticks)
            .unwrap_or_default(),
    }
}

/// Busy ticks of all CPUs from the aggregate `cpu` line of `/proc/stat`:
/// user, nice, system, irq, softirq and steal (guest time is already in
/// user); idle and iowait are not busy.
fn machine_busy(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map_while(|v| v.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Some(u32::try_from(busy).unwrap_or(u32::MAX))
}

/// `(comm, utime + stime)` from a `stat` line. `comm` sits in parentheses
/// and may itself contain spaces or `)`, so fields are counted from the
/// last `)`.
fn parse_stat(text: &str) -> Option<(String, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After ") ": field 3 (state) is index 0, so utime (14) is 11, stime 12.
    let mut fields = text.get(close + 2..)?.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((comm, u32::try_from(utime + stime).unwrap_or(u32::MAX)))
}

/// Length of one clock tick (`getconf CLK_TCK`; 100 Hz on every Linux
/// configuration we know of, used if `getconf` is absent).
fn clock_tick() -> Duration {
    static TICK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        let hz = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|hz| *hz > 0)
            .unwrap_or(100);
        Duration::from_nanos(1_000_000_000 / hz)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_paren() {
        let line = "1234 (weir rx) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4";
        assert_eq!(parse_stat(line), Some(("weir rx) x".to_owned(), 300)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn machine_busy_skips_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 2 1 0 0\ncpu0 50 2 25 4500 20 1 1 0 0 0\n";
        assert_eq!(machine_busy(stat), Some(161));
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(&["nothing-matches"], None);
        assert!(s.threads.contains_key("other"));
    }
}
