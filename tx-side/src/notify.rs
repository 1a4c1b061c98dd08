//! systemd service notifications (sd_notify(3)) for `weir-tx run`.
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
//! runtime or the process hangs, not when the link is merely quiet (an idle
//! sender is healthy).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use weir_tx::telemetry::Telemetry;

/// How often the status line is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The shortest ping period, whatever `WATCHDOG_USEC` says.
const MIN_PING_EVERY: Duration = Duration::from_millis(10);

/// Whether systemd is listening (`NOTIFY_SOCKET` is set).
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Send `states`; a failure is logged once, then only counted by silence.
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

/// The pipeline runs: `READY=1` with a first status line.
pub(crate) fn ready(telemetry: &Telemetry) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(telemetry)),
    ]);
}

/// An orderly stop began: `STOPPING=1`.
pub(crate) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: sending what was taken"),
    ]);
}

/// The pipeline failed: the error becomes the status line.
pub(crate) fn failed(error: &anyhow::Error) {
    send(&[NotifyState::Status(&format!("failed: {error:#}"))]);
}

/// Keep the status line fresh and, when systemd set a watchdog for this
/// process (`sd_notify::watchdog_enabled`), ping it at half its interval.
/// Runs until the runtime shuts down.
pub(crate) fn spawn_keepalive(telemetry: std::sync::Arc<Telemetry>) {
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
            let line = status_line(&telemetry);
            if watchdog.is_some() {
                send(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
            } else {
                send(&[NotifyState::Status(&line)]);
            }
        }
    });
}

/// One short line for `systemctl status`.
fn status_line(t: &Telemetry) -> String {
    let c = t.counters();
    let send_errors = t.send_errors.load(Ordering::Relaxed);
    let mut line = format!(
        "sent {} records in {} blocks ({} datagrams), {} files done",
        c.records, c.blocks, c.datagrams, c.files_done
    );
    for (n, what) in [
        (c.files_quarantined, "files quarantined"),
        (send_errors, "send errors"),
        (c.alerts_dropped, "alerts dropped"),
    ] {
        if n > 0 {
            let _ = write!(line, ", {n} {what}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_tx::telemetry::add;

    #[test]
    fn the_status_line_names_trouble_only_when_there_is_some() {
        let t = Telemetry::default();
        assert_eq!(
            status_line(&t),
            "sent 0 records in 0 blocks (0 datagrams), 0 files done"
        );
        add(&t.records, 12);
        add(&t.blocks, 2);
        add(&t.datagrams, 9);
        add(&t.send_errors, 3);
        assert_eq!(
            status_line(&t),
            "sent 12 records in 2 blocks (9 datagrams), 0 files done, 3 send errors"
        );
    }
}
