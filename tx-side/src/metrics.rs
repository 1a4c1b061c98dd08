//! The sender's Prometheus endpoint (`[metrics] listen`).
//!
//! ```text
//!  stages ──relaxed atomics──> Telemetry ──every 1 s, copied──> metrics registry ──HTTP GET──> Prometheus
//! ```
//!
//! The stages count in [`Telemetry`], as they always have: the heartbeat
//! reads the same atomics. This module only copies them into the `metrics`
//! registry once a second (counters as absolute values), so every number
//! has one source and the hot paths gain nothing. A scrape therefore sees
//! values up to a second old.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use weir_shared::lane::Lane;
use weir_shared::wire::SessionId;

use crate::TxHandle;
use crate::telemetry::Telemetry;

/// How often the counters are copied into the registry.
const EVERY: Duration = Duration::from_secs(1);

/// A counter of [`Telemetry`].
type Field = fn(&Telemetry) -> &AtomicU64;
/// Plain counters: (metric, help, counter).
type Plain = (&'static str, &'static str, Field);

const COUNTERS: [Plain; 10] = [
    ("weir_tx_records_total", "Records sent.", |t| &t.records),
    (
        "weir_tx_blocks_total",
        "Blocks sent (first sendings; repeats are weir_tx_blocks_repeated_total).",
        |t| &t.blocks,
    ),
    (
        "weir_tx_datagrams_total",
        "Datagrams handed to the socket, repeats included.",
        |t| &t.datagrams,
    ),
    (
        "weir_tx_bytes_total",
        "Datagram bytes handed to the socket (header, symbol, CRC), repeats included.",
        |t| &t.wire_bytes,
    ),
    (
        "weir_tx_repair_symbols_total",
        "FEC repair symbols sent.",
        |t| &t.repair_symbols,
    ),
    ("weir_tx_files_done_total", "Spool files fully sent.", |t| {
        &t.files_done
    }),
    ("weir_tx_alerts_total", "Alerts taken.", |t| &t.alerts),
    (
        "weir_tx_blocks_repeated_total",
        "Blocks sent a second time (lanes.*.repeat_after).",
        |t| &t.blocks_repeated,
    ),
    (
        "weir_tx_repeats_skipped_total",
        "Blocks not repeated because the lane's repeat buffer was full.",
        |t| &t.repeats_skipped,
    ),
    (
        "weir_tx_file_transfers_total",
        "Opaque file transfers started.",
        |t| &t.file_transfers,
    ),
];

/// `weir_tx_drops_total{reason}`: what the sender took and did not send.
const DROPS: [(&str, Field); 6] = [
    ("alert_queue_full", |t| &t.alerts_dropped),
    ("alert_malformed", |t| &t.alerts_rejected),
    ("record_too_large", |t| &t.records_refused),
    ("line_rejected", |t| &t.lines_rejected),
    ("file_quarantined", |t| &t.files_quarantined),
    ("send_error", |t| &t.send_errors),
];

/// What the sender is, for the gauges that do not move.
#[derive(Debug, Clone, Copy)]
pub struct SenderInfo {
    /// The session drawn at start.
    pub session: SessionId,
    /// The pacer's rate, bytes per second.
    pub rate_bytes_per_sec: u64,
}

/// Install the Prometheus recorder and its HTTP listener on `listen`
/// (nothing when `None`: the endpoint is off). Call once, inside the
/// runtime, before the pipeline starts: a port that cannot be bound stops
/// startup here.
pub fn install(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some(listen) = listen else {
        return Ok(());
    };
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .with_context(|| {
            format!("config key `metrics.listen`: cannot serve metrics on {listen}")
        })?;
    tracing::info!(listen = %listen, "Metrics endpoint listening.");
    Ok(())
}

/// Start copying the running sender's telemetry into the registry (a
/// detached task: the endpoint shows the final counters until the process
/// exits). Does nothing useful unless [`install`] installed the recorder.
pub fn spawn(handle: &TxHandle, rate_bytes_per_sec: u64) {
    let info = SenderInfo {
        session: handle.session,
        rate_bytes_per_sec,
    };
    tokio::spawn(export(handle.telemetry.clone(), info));
}

fn describe() {
    for (name, help, _) in COUNTERS {
        describe_counter!(name, Unit::Count, help);
    }
    describe_counter!(
        "weir_tx_drops_total",
        Unit::Count,
        "Input taken and not sent, by reason: alert_queue_full, alert_malformed, record_too_large, line_rejected, file_quarantined, send_error (datagrams the kernel refused)."
    );
    describe_gauge!(
        "weir_tx_spool_files",
        Unit::Count,
        "Files waiting in the spools' incoming/."
    );
    describe_gauge!(
        "weir_tx_spool_bytes",
        Unit::Bytes,
        "Bytes of the files waiting in the spools' incoming/."
    );
    describe_gauge!(
        "weir_tx_alert_queue_bytes",
        Unit::Bytes,
        "Bytes of alerts waiting in the alert queue on disk."
    );
    describe_gauge!(
        "weir_tx_pace_rate_bytes_per_second",
        "The pacer's rate (link.rate_mbps), datagram bytes per second."
    );
    describe_gauge!(
        "weir_tx_last_block_sent",
        "Highest block sequence number fully sent, per lane (-1: none yet)."
    );
    describe_gauge!(
        "weir_tx_session_info",
        "1 for the running sender session, labelled with its sender id, session and epoch."
    );
}

/// Copy the telemetry into the registry now.
fn copy(t: &Telemetry, info: &SenderInfo) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (name, _, c) in COUNTERS {
        counter!(name).absolute(get(c(t)));
    }
    for (reason, c) in DROPS {
        counter!("weir_tx_drops_total", "reason" => reason).absolute(get(c(t)));
    }
    gauge!("weir_tx_spool_files").set(get(&t.spool_depth) as f64);
    gauge!("weir_tx_spool_bytes").set(get(&t.spool_bytes) as f64);
    gauge!("weir_tx_alert_queue_bytes").set(get(&t.alert_queue_bytes) as f64);
    gauge!("weir_tx_pace_rate_bytes_per_second").set(info.rate_bytes_per_sec as f64);
    let last = t.last_sent();
    for lane in Lane::ALL {
        let v = last[lane.index()].map_or(-1.0, |s| s as f64);
        gauge!("weir_tx_last_block_sent", "lane" => lane.as_str()).set(v);
    }
    gauge!("weir_tx_session_info",
        "sender_id" => info.session.sender().to_string(),
        "session" => info.session.short_hex(),
        "epoch" => info.session.epoch().to_string())
    .set(1.0);
}

/// Describe the metrics, then copy the telemetry into the registry every
/// second, for as long as the runtime runs.
pub async fn export(telemetry: Arc<Telemetry>, info: SenderInfo) {
    describe();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        copy(&telemetry, &info);
    }
}
