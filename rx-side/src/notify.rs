//! systemd service notifications (sd_notify(3)) for `weir-rx run`.
//!
//! ```text
//!  pipeline started ─> READY=1 + STATUS=…
//!  every min(WatchdogSec/2, 5 s) ─> WATCHDOG=1 (if asked for) + STATUS=…
//!  SIGTERM / SIGINT ─> STOPPING=1 + STATUS=stopping…
//!  pipeline failed ─> STATUS=failed: <error>
//! ```
//!
//! Under `Type=notify`, systemd calls the service started only on
//! `READY=1`, shows the last `STATUS=` line in `systemctl status`, and
//! restarts the service when `WATCHDOG=1` pings stop for `WatchdogSec=`.
//! Outside systemd (`NOTIFY_SOCKET` unset) every call here does nothing.
//!
//! The pings come from a task on the tokio runtime: they stop when the
//! runtime or the process hangs, not when the link is merely quiet or the
//! broker away (the outbox holds the data; the status line says so).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use weir_rx::RxHandle;
use weir_rx::pipeline::LinkState;
use weir_rx::stats::{RxSnapshot, RxStats};

/// How often the status line is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The shortest ping period, whatever `WATCHDOG_USEC` says.
const MIN_PING_EVERY: Duration = Duration::from_millis(10);

/// Whether systemd is listening (`NOTIFY_SOCKET` is set).
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Send `states`; a failure is logged once.
fn send(states: &[NotifyState<'_>]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states)
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "Cannot notify systemd (NOTIFY_SOCKET); further failures are not logged.");
    }
}

/// What the status line is made from.
#[derive(Clone)]
pub(crate) struct Source {
    stats: Arc<RxStats>,
    link: Arc<Mutex<LinkState>>,
    link_timeout: Duration,
}

impl Source {
    /// The running receiver's counters and link state.
    pub(crate) fn new(handle: &RxHandle, link_timeout: Duration) -> Self {
        Self {
            stats: handle.stats.clone(),
            link: handle.link.clone(),
            link_timeout,
        }
    }

    /// One short line for `systemctl status`.
    fn line(&self) -> String {
        let last = self
            .link
            .lock()
            .ok()
            .and_then(|l| l.last.as_ref().map(|(at, ..)| *at));
        let link = match last {
            None => "link: no heartbeat yet",
            Some(at) if Instant::now().duration_since(at) < self.link_timeout => "link up",
            Some(_) => "link DOWN",
        };
        status_line(link, &self.stats.snapshot())
    }
}

fn status_line(link: &str, s: &RxSnapshot) -> String {
    let mut line = format!(
        "{link}; {} blocks, {} records received; {} messages acked by the broker, outbox {} KiB",
        s.blocks_ok,
        s.records,
        s.acked,
        s.outbox_bytes / 1024
    );
    for (n, what) in [
        (s.records_lost, "records lost"),
        (s.gap_entries_uncounted, "gaps of unknown size"),
        (s.blocks_shed, "blocks shed"),
        (s.outbox_refused, "blocks refused by the outbox"),
    ] {
        if n > 0 {
            let _ = write!(line, ", {n} {what}");
        }
    }
    line
}

/// The pipeline runs: `READY=1` with a first status line.
pub(crate) fn ready(source: &Source) {
    send(&[NotifyState::Ready, NotifyState::Status(&source.line())]);
}

/// An orderly stop began: `STOPPING=1`.
pub(crate) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: publishing what was decoded"),
    ]);
}

/// The pipeline failed: the error becomes the status line.
pub(crate) fn failed(error: &anyhow::Error) {
    send(&[NotifyState::Status(&format!("failed: {error:#}"))]);
}

/// Keep the status line fresh and, when systemd set a watchdog for this
/// process (`sd_notify::watchdog_enabled`), ping it at half its interval.
/// Runs until the runtime shuts down.
pub(crate) fn spawn_keepalive(source: Source) {
    if !enabled() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |w| {
        (w / 2).clamp(MIN_PING_EVERY, STATUS_EVERY)
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let line = source.line();
            if watchdog.is_some() {
                send(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
            } else {
                send(&[NotifyState::Status(&line)]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_losses_only_when_there_are_some() {
        let mut s = RxSnapshot {
            blocks_ok: 4,
            records: 100,
            acked: 7,
            outbox_bytes: 4096,
            ..RxSnapshot::default()
        };
        assert_eq!(
            status_line("link up", &s),
            "link up; 4 blocks, 100 records received; 7 messages acked by the broker, outbox 4 KiB"
        );
        s.records_lost = 30;
        s.blocks_shed = 1;
        assert!(
            status_line("link DOWN", &s).ends_with("outbox 4 KiB, 30 records lost, 1 blocks shed"),
            "{}",
            status_line("link DOWN", &s)
        );
    }
}
