//! The receiver's line for `systemctl status` (sent by
//! `weir_service::notify`): link state, what was received and
//! acknowledged, and losses when there are any.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_rx::RxHandle;
use weir_rx::pipeline::LinkState;
use weir_rx::stats::{RxSnapshot, RxStats};

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
    pub(crate) fn line(&self) -> String {
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
    weir_service::notify::append_nonzero(
        &mut line,
        &[
            (s.records_lost, "records lost"),
            (s.gap_entries_uncounted, "gaps of unknown size"),
            (s.blocks_shed, "blocks shed"),
            (s.outbox_refused, "blocks refused by the outbox"),
        ],
    );
    line
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
