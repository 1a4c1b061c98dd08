//! The sender's line for `systemctl status` (sent by
//! `weir_service::notify`): what was sent, and trouble when there is some.

use std::sync::atomic::Ordering;

use weir_tx::telemetry::Telemetry;

/// One short line for `systemctl status`.
pub(crate) fn status_line(t: &Telemetry) -> String {
    let c = t.counters();
    let send_errors = t.send_errors.load(Ordering::Relaxed);
    let mut line = format!(
        "sent {} records in {} blocks ({} datagrams), {} files done",
        c.records, c.blocks, c.datagrams, c.files_done
    );
    weir_service::notify::append_nonzero(
        &mut line,
        &[
            (c.files_quarantined, "files quarantined"),
            (send_errors, "send errors"),
            (c.alerts_dropped, "alerts dropped"),
        ],
    );
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
