//! systemd service notifications (sd_notify(3)) for the daemons, `weir-tx
//! run` and `weir-rx run`: the I/O half, kept out of the sans-IO core.
//! Each daemon supplies its own status line.
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
//! runtime or the process hangs, not when the link is merely quiet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

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

/// Append `, {n} {what}` to a status line for each count that is not
/// zero: trouble is named only when there is some.
pub fn append_nonzero(line: &mut String, counts: &[(u64, &str)]) {
    use std::fmt::Write as _;
    for (n, what) in counts {
        if *n > 0 {
            let _ = write!(line, ", {n} {what}");
        }
    }
}

/// The pipeline runs: `READY=1` with a first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// An orderly stop began: `STOPPING=1`, and what the daemon does meanwhile.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The pipeline failed: the error becomes the status line.
pub fn failed(error: &anyhow::Error) {
    send(&[NotifyState::Status(&format!("failed: {error:#}"))]);
}

/// The status refresh period: half the watchdog interval when systemd set
/// one, within [`MIN_PING_EVERY`] and [`STATUS_EVERY`].
fn refresh_every(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(STATUS_EVERY, |w| {
        (w / 2).clamp(MIN_PING_EVERY, STATUS_EVERY)
    })
}

/// Keep the status line (from `line`) fresh and, when systemd set a
/// watchdog for this process (`sd_notify::watchdog_enabled`), ping it at
/// half its interval. Runs until the runtime shuts down.
pub fn spawn_keepalive(line: impl Fn() -> String + Send + 'static) {
    if !enabled() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let every = refresh_every(watchdog);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let line = line();
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
    fn pings_come_at_half_the_watchdog_within_bounds() {
        assert_eq!(refresh_every(None), STATUS_EVERY);
        assert_eq!(
            refresh_every(Some(Duration::from_secs(4))),
            Duration::from_secs(2)
        );
        assert_eq!(refresh_every(Some(Duration::from_mins(1))), STATUS_EVERY);
        assert_eq!(
            refresh_every(Some(Duration::from_millis(1))),
            MIN_PING_EVERY
        );
    }
}
