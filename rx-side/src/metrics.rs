//! The receiver's Prometheus endpoint (`[metrics] listen`), with the
//! sender's health as its heartbeats report it.
//!
//! ```text
//!  stages ──relaxed atomics──> RxStats ───────────┐
//!  heartbeats, decode ──> LinkState (lag, FEC) ───┼──every 1 s, copied──> metrics registry ──HTTP GET──> Prometheus
//!  outbox file ──entries per table───────────────┘
//! ```
//!
//! The stages keep counting in [`RxStats`] and [`LinkState`], which the
//! status topic and the final counters also read; this module only copies
//! them into the `metrics` registry once a second (counters as absolute
//! values). Every number has one source, and no hot path gains a metric
//! call. A scrape sees values up to a second old.
//!
//! The sender's figures (`weir_sender_*`) come from the last heartbeat,
//! labelled with its sender id and session. A sender restart is a new
//! session: new series, whose counters start again from 0. Series not
//! updated for [`IDLE`] (an old session's) are dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::MetricKindMask;
use weir_shared::dq::Check;
use weir_shared::headroom::HeadroomReport;
use weir_shared::heartbeat::Heartbeat;
use weir_shared::lane::Lane;
use weir_shared::wire::{Role, SessionId};

use crate::pipeline::outbox::{Outbox, Table};
use crate::pipeline::status::{lag_blocks, link_up};
use crate::pipeline::{LinkState, now};
use crate::stats::{DQ_BAD_FLAGS, DQ_FLAGS, RxSnapshot, RxStats, flag_name};

/// How often the counters are copied into the registry.
const EVERY: Duration = Duration::from_secs(1);
/// Series not updated for this long are dropped (sessions that ended).
const IDLE: Duration = Duration::from_mins(10);

/// A counter read from the snapshot.
type Field = fn(&RxSnapshot) -> u64;

/// Plain receiver counters: (metric, help, field).
const COUNTERS: [(&str, &str, Field); 24] = [
    ("weir_rx_datagrams_total", "Datagrams received.", |s| {
        s.datagrams
    }),
    ("weir_rx_bytes_total", "Datagram bytes received.", |s| {
        s.bytes
    }),
    (
        "weir_rx_blocks_decoded_total",
        "Blocks delivered: rebuilt, authenticated and decoded.",
        |s| s.blocks_ok,
    ),
    (
        "weir_rx_blocks_lost_total",
        "Blocks declared lost (FEC could not rebuild them, or sent while the receiver was not listening); reported as gaps.",
        |s| s.blocks_lost,
    ),
    (
        "weir_rx_blocks_shed_total",
        "Blocks shed because the outbox writer fell behind; reported as gaps.",
        |s| s.blocks_shed,
    ),
    (
        "weir_rx_outbox_refused_total",
        "Blocks a full or failing outbox refused; reported as gaps.",
        |s| s.outbox_refused,
    ),
    (
        "weir_rx_fec_repaired_symbols_total",
        "Source symbols rebuilt from repair symbols.",
        |s| s.fec_repaired,
    ),
    (
        "weir_rx_fec_symbols_missing_total",
        "Symbols of rebuilt blocks lost on the link: the repair symbols the link used up.",
        |s| s.fec_symbols_missing,
    ),
    (
        "weir_rx_heartbeats_total",
        "Sender heartbeats accepted.",
        |s| s.heartbeats,
    ),
    ("weir_rx_records_total", "Records decoded.", |s| s.records),
    (
        "weir_rx_sessions_evicted_total",
        "Sender sessions dropped from tracking by limits.max_sessions.",
        |s| s.sessions_evicted,
    ),
    (
        "weir_rx_gap_entries_total",
        "Gap ledger entries written.",
        |s| s.gap_entries,
    ),
    (
        "weir_rx_gap_entries_uncounted_total",
        "Gap ledger entries whose record count could not be known.",
        |s| s.gap_entries_uncounted,
    ),
    (
        "weir_rx_records_lost_total",
        "Records the gap ledger counts as lost.",
        |s| s.records_lost,
    ),
    (
        "weir_rx_outbox_committed_total",
        "Entries (blocks and events) committed to the outbox.",
        |s| s.outbox_committed,
    ),
    (
        "weir_rx_mqtt_published_total",
        "MQTT messages handed to the client.",
        |s| s.published,
    ),
    (
        "weir_rx_mqtt_acked_total",
        "MQTT messages the broker acknowledged (QoS 1 PUBACK).",
        |s| s.acked,
    ),
    (
        "weir_rx_mqtt_rewinds_total",
        "Times the outbox was published again from its oldest entry.",
        |s| s.rewinds,
    ),
    (
        "weir_rx_dq_events_total",
        "Data-quality events published.",
        |s| s.dq_events,
    ),
    (
        "weir_rx_dq_duplicates_total",
        "Points withheld as exact duplicates of points already published.",
        |s| s.dq_duplicates,
    ),
    (
        "weir_rx_dq_quarantined_total",
        "Points sent to the quarantine topic instead of their live one.",
        |s| s.dq_quarantined,
    ),
    (
        "weir_rx_sparkplug_dropped_total",
        "Points Sparkplug could not publish (beyond max_devices or max_metrics_per_device).",
        |s| s.sparkplug_dropped,
    ),
    (
        "weir_rx_file_chunks_total",
        "File chunks received (dropped without [files]).",
        |s| s.file_chunks,
    ),
    (
        "weir_rx_file_chunks_refused_total",
        "File chunks refused (beyond the declared size, conflicting metadata).",
        |s| s.file_chunks_refused,
    ),
];

/// `weir_rx_drops_total{reason}`: datagrams, symbols, blocks and
/// heartbeats refused before delivery.
const DROPS: [(&str, Field); 20] = [
    ("crc", |s| s.drop_crc),
    ("malformed", |s| s.drop_malformed),
    ("forged", |s| s.drop_forged),
    ("unverified", |s| s.drop_unverified),
    ("resolved", |s| s.drop_resolved),
    ("too_old", |s| s.drop_too_old),
    ("geometry", |s| s.drop_geometry),
    ("inconsistent", |s| s.drop_inconsistent),
    ("pending_full", |s| s.drop_pending_full),
    ("excess", |s| s.drop_excess),
    ("pending_expired", |s| s.pending_expired),
    ("pending_evicted", |s| s.pending_evicted),
    ("unknown_key", |s| s.drop_unknown_key),
    ("retired_key", |s| s.drop_retired_key),
    ("auth", |s| s.drop_auth),
    ("replay", |s| s.drop_replay),
    ("frame", |s| s.drop_frame),
    ("trailer", |s| s.drop_trailer),
    ("old_session", |s| s.drop_old_session),
    ("stale", |s| s.drop_stale),
];

/// `weir_rx_files_total{outcome}`.
const FILES: [(&str, Field); 5] = [
    ("done", |s| s.files_done),
    ("duplicate", |s| s.files_duplicate),
    ("incomplete", |s| s.files_incomplete),
    ("corrupt", |s| s.files_corrupt),
    ("refused", |s| s.files_refused),
];

/// Per-lane FEC gauges from the headroom report: (metric, help, value).
type Fec = fn(&HeadroomReport) -> Option<f64>;
const FEC: [(&str, &str, Fec); 10] = [
    (
        "weir_rx_fec_window_blocks",
        "Blocks in the FEC headroom window (rebuilt and lost).",
        |r| Some(f64::from(r.blocks)),
    ),
    (
        "weir_rx_fec_window_blocks_lost",
        "Blocks of the window that more loss than their repair symbols could cover took.",
        |r| Some(f64::from(r.blocks_lost)),
    ),
    (
        "weir_rx_fec_window_symbols_sent",
        "Symbols sent to the window's rebuilt blocks until they were rebuilt.",
        |r| Some(r.symbols_expected as f64),
    ),
    (
        "weir_rx_fec_window_symbols_missing",
        "Of those, symbols lost on the link: repair symbols used.",
        |r| Some(r.symbols_missing as f64),
    ),
    (
        "weir_rx_fec_loss_ratio",
        "Symbol loss rate over the window.",
        |r| Some(r.loss),
    ),
    (
        "weir_rx_fec_need_p99_ratio",
        "99th percentile of the repair symbols a rebuilt block needed, as a fraction of its source symbols.",
        |r| Some(r.need_p99),
    ),
    (
        "weir_rx_fec_repair_ratio",
        "Repair symbols sent per source symbol, as the sender announced (lanes.*.repair_ratio).",
        |r| r.ratio,
    ),
    (
        "weir_rx_fec_headroom_p99_ratio",
        "Repair left over (sent minus needed, fraction of K) that 99 % of rebuilt blocks had at least.",
        |r| r.headroom_p99,
    ),
    (
        "weir_rx_fec_headroom_min_symbols",
        "Fewest repair symbols a rebuilt block had left over (sent minus needed).",
        |r| r.headroom_min_symbols.map(|v| v as f64),
    ),
    (
        "weir_rx_fec_recommended_ratio",
        "A repair_ratio that covers the window's p99 need, with a margin.",
        |r| r.recommended_ratio,
    ),
];

/// Install the Prometheus recorder and its HTTP listener on `listen`
/// (nothing when `None`: the endpoint is off). Call once, inside the
/// runtime, before the receiver starts: a port that cannot be bound stops
/// startup here.
pub fn install(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some(listen) = listen else {
        return Ok(());
    };
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .idle_timeout(MetricKindMask::ALL, Some(IDLE))
        .install()
        .with_context(|| {
            format!("config key `metrics.listen`: cannot serve metrics on {listen}")
        })?;
    tracing::info!(listen = %listen, "Metrics endpoint listening.");
    Ok(())
}

/// What the exporter reads.
pub(crate) struct Sources {
    /// Receiver counters.
    pub(crate) stats: Arc<RxStats>,
    /// Heartbeats, deliveries, FEC meters.
    pub(crate) link: Arc<Mutex<LinkState>>,
    /// The outbox, for its entries per table.
    pub(crate) store: Arc<Outbox>,
    /// `link.link_timeout`.
    pub(crate) link_timeout: Duration,
}

/// Describe the metrics, then copy the counters into the registry every
/// second, for as long as the runtime runs.
pub(crate) async fn export(src: Sources) {
    describe();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = src.store.clone();
        // redb reads block: off the runtime's workers.
        let entries =
            tokio::task::spawn_blocking(move || Table::ALL.map(|t| (t, store.len(t).ok())))
                .await
                .ok();
        let link = src.link.lock().map(|l| l.clone()).unwrap_or_default();
        copy_receiver(&src.stats, entries);
        copy_link(&link, src.link_timeout);
    }
}

fn table_name(t: Table) -> &'static str {
    match t {
        Table::Events => "events",
        Table::Alert => "alert",
        Table::Bulk => "bulk",
    }
}

fn copy_receiver(stats: &RxStats, entries: Option<[(Table, Option<u64>); 3]>) {
    let s = stats.snapshot();
    for (name, _, f) in COUNTERS {
        counter!(name).absolute(f(&s));
    }
    for (reason, f) in DROPS {
        counter!("weir_rx_drops_total", "reason" => reason).absolute(f(&s));
    }
    for (outcome, f) in FILES {
        counter!("weir_rx_files_total", "outcome" => outcome).absolute(f(&s));
    }
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let unacked = get(&stats.publish_failed);
    counter!("weir_rx_mqtt_unacked_total").absolute(unacked);
    counter!("weir_rx_link_cpu_seconds_total").absolute(get(&stats.link_cpu_ns) / 1_000_000_000);
    for (flag, c) in DQ_FLAGS.iter().zip(&stats.dq_flags.worst) {
        counter!("weir_rx_dq_points_total", "flag" => flag_name(*flag)).absolute(get(c));
    }
    for check in Check::ALL {
        for (flag, c) in DQ_BAD_FLAGS
            .iter()
            .zip(&stats.dq_flags.checks[check.index()])
        {
            counter!("weir_rx_dq_check_flags_total",
                "check" => check.name(), "flag" => flag_name(*flag))
            .absolute(get(c));
        }
    }
    gauge!("weir_rx_outbox_bytes").set(s.outbox_bytes as f64);
    for (table, n) in entries.into_iter().flatten() {
        if let Some(n) = n {
            gauge!("weir_rx_outbox_entries", "table" => table_name(table)).set(n as f64);
        }
    }
    let inflight = s.published.saturating_sub(s.acked).saturating_sub(unacked);
    gauge!("weir_rx_mqtt_inflight").set(inflight as f64);
    gauge!("weir_rx_dq_tags").set(s.dq_tags as f64);
    gauge!("weir_rx_fec_repair_needed_max_symbols").set(s.fec_repair_needed_max as f64);
}

fn copy_link(link: &LinkState, link_timeout: Duration) {
    let t = now();
    gauge!("weir_rx_link_up").set(if link_up(link, link_timeout, t) {
        1.0
    } else {
        0.0
    });
    for (lane, report) in Lane::ALL.into_iter().zip(link.headroom.reports()) {
        for (name, _, f) in FEC {
            if let Some(v) = f(&report) {
                gauge!(name, "lane" => lane.as_str()).set(v);
            }
        }
        gauge!("weir_rx_lag_blocks", "lane" => lane.as_str()).set(lag_blocks(link, lane) as f64);
    }
    let Some((at, session, hb)) = &link.last else {
        return;
    };
    gauge!("weir_rx_heartbeat_age_seconds").set(t.duration_since(*at).as_secs_f64());
    gauge!("weir_rx_clock_skew_seconds").set(link.skew_ms as f64 / 1000.0);
    gauge!("weir_rx_sender_session_info",
        "sender_id" => session.sender().to_string(),
        "session" => session.short_hex(),
        "epoch" => session.epoch().to_string(),
        "role" => role_name(session.role()))
    .set(1.0);
    copy_sender(*session, hb);
}

/// A session's role, as a label value.
fn role_name(role: u8) -> String {
    match role {
        r if r == Role::Daemon as u8 => "daemon".into(),
        r if r == Role::OneShot as u8 => "one_shot".into(),
        other => other.to_string(),
    }
}

/// The sender's health, from its last heartbeat.
fn copy_sender(session: SessionId, hb: &Heartbeat) {
    let labels = [
        ("sender_id", session.sender().to_string()),
        ("session", session.short_hex()),
    ];
    let c = &hb.counters;
    let counters = [
        ("weir_sender_records_total", c.records),
        ("weir_sender_blocks_total", c.blocks),
        ("weir_sender_datagrams_total", c.datagrams),
        ("weir_sender_bytes_total", c.wire_bytes),
        ("weir_sender_files_done_total", c.files_done),
        ("weir_sender_alerts_total", c.alerts),
    ];
    for (name, v) in counters {
        counter!(name, &labels).absolute(v);
    }
    let mut drops = vec![
        ("alert_queue_full", c.alerts_dropped),
        ("alert_malformed", c.alerts_rejected),
        ("line_rejected", c.lines_rejected),
        ("file_quarantined", c.files_quarantined),
    ];
    gauge!("weir_sender_spool_files", &labels).set(hb.spool_depth as f64);
    gauge!("weir_sender_uptime_seconds", &labels).set(hb.uptime_ms as f64 / 1000.0);
    for lane in Lane::ALL {
        let v = hb.last_sent[lane.index()].map_or(-1.0, |s| s as f64);
        gauge!("weir_sender_last_block_sent", "sender_id" => labels[0].1.clone(),
            "session" => labels[1].1.clone(), "lane" => lane.as_str())
        .set(v);
    }
    if let Some(h) = &hb.health {
        drops.extend([
            ("record_too_large", h.records_refused),
            ("send_error", h.send_errors),
        ]);
        for (name, v) in [
            ("weir_sender_repair_symbols_total", h.repair_symbols),
            ("weir_sender_blocks_repeated_total", h.blocks_repeated),
            ("weir_sender_repeats_skipped_total", h.repeats_skipped),
        ] {
            counter!(name, &labels).absolute(v);
        }
        gauge!("weir_sender_spool_bytes", &labels).set(h.spool_bytes as f64);
        gauge!("weir_sender_alert_queue_bytes", &labels).set(h.alert_queue_bytes as f64);
        gauge!("weir_sender_pace_rate_bytes_per_second", &labels).set(h.rate_bytes_per_sec as f64);
    }
    for (reason, v) in drops {
        counter!("weir_sender_drops_total", "sender_id" => labels[0].1.clone(),
            "session" => labels[1].1.clone(), "reason" => reason)
        .absolute(v);
    }
}

fn describe() {
    for (name, help, _) in COUNTERS {
        describe_counter!(name, Unit::Count, help);
    }
    describe_counter!(
        "weir_rx_mqtt_unacked_total",
        Unit::Count,
        "MQTT messages the client reported not acknowledged (connection or session lost); published again from the outbox."
    );
    describe_counter!(
        "weir_rx_link_cpu_seconds_total",
        Unit::Seconds,
        "CPU time of the link stages (receive, CRC and header checks, reassembly, FEC, AEAD): turning datagrams into decoded blocks, apart from storing and delivering them."
    );
    describe_counter!(
        "weir_rx_drops_total",
        Unit::Count,
        "Datagrams, symbols, blocks and heartbeats refused before delivery, by reason (the receiver's drop_* counters)."
    );
    describe_counter!(
        "weir_rx_files_total",
        Unit::Count,
        "Received files by outcome: done (written), duplicate, incomplete, corrupt, refused."
    );
    describe_counter!(
        "weir_rx_dq_points_total",
        Unit::Count,
        "Points judged by the data-quality checks, by their worst flag."
    );
    describe_counter!(
        "weir_rx_dq_check_flags_total",
        Unit::Count,
        "Points a data-quality check flagged suspect, fail or missing, by check and flag."
    );
    describe_gauge!(
        "weir_rx_outbox_bytes",
        Unit::Bytes,
        "Block bytes held in the outbox."
    );
    describe_gauge!(
        "weir_rx_outbox_entries",
        "Entries held in the outbox, by table (events, alert, bulk)."
    );
    describe_gauge!(
        "weir_rx_mqtt_inflight",
        "MQTT messages handed to the client and not yet acknowledged or failed."
    );
    describe_gauge!(
        "weir_rx_dq_tags",
        "Tags whose data-quality state is tracked."
    );
    describe_gauge!(
        "weir_rx_fec_repair_needed_max_symbols",
        "Most repair symbols one rebuilt block needed since start."
    );
    for (name, help, _) in FEC {
        describe_gauge!(name, help);
    }
    describe_gauge!(
        "weir_rx_lag_blocks",
        "Blocks the last heartbeat says were sent and not yet delivered, per lane."
    );
    describe_gauge!(
        "weir_rx_link_up",
        "1 while heartbeats arrive within link.link_timeout."
    );
    describe_gauge!(
        "weir_rx_heartbeat_age_seconds",
        Unit::Seconds,
        "Time since the last accepted heartbeat."
    );
    describe_gauge!(
        "weir_rx_clock_skew_seconds",
        Unit::Seconds,
        "Sender clock minus receiver clock at the last heartbeat."
    );
    describe_gauge!(
        "weir_rx_sender_session_info",
        "1 for the sender session of the last heartbeat, labelled with its sender id, session, epoch and role (daemon, one_shot)."
    );
    describe_sender();
}

fn describe_sender() {
    for (name, help) in [
        (
            "weir_sender_records_total",
            "Records the sender sent (from its heartbeats).",
        ),
        (
            "weir_sender_blocks_total",
            "Blocks the sender sent, first sendings (from its heartbeats).",
        ),
        (
            "weir_sender_datagrams_total",
            "Datagrams the sender sent, repeats included (from its heartbeats).",
        ),
        (
            "weir_sender_bytes_total",
            "Datagram bytes the sender sent (from its heartbeats).",
        ),
        (
            "weir_sender_files_done_total",
            "Spool files the sender fully sent (from its heartbeats).",
        ),
        (
            "weir_sender_alerts_total",
            "Alerts the sender took (from its heartbeats).",
        ),
        (
            "weir_sender_repair_symbols_total",
            "FEC repair symbols the sender sent (from its heartbeats).",
        ),
        (
            "weir_sender_blocks_repeated_total",
            "Blocks the sender sent a second time (from its heartbeats).",
        ),
        (
            "weir_sender_repeats_skipped_total",
            "Blocks the sender could not repeat, repeat buffer full (from its heartbeats).",
        ),
        (
            "weir_sender_drops_total",
            "Input the sender took and did not send, by reason (from its heartbeats).",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    describe_gauge!(
        "weir_sender_spool_files",
        "Files waiting in the sender's spools (from its heartbeats)."
    );
    describe_gauge!(
        "weir_sender_spool_bytes",
        Unit::Bytes,
        "Bytes of the files waiting in the sender's spools (from its heartbeats)."
    );
    describe_gauge!(
        "weir_sender_alert_queue_bytes",
        Unit::Bytes,
        "Bytes of alerts waiting in the sender's alert queue (from its heartbeats)."
    );
    describe_gauge!(
        "weir_sender_pace_rate_bytes_per_second",
        "The sender's pacing rate, datagram bytes per second (from its heartbeats)."
    );
    describe_gauge!(
        "weir_sender_uptime_seconds",
        Unit::Seconds,
        "Time since the sender session started (from its heartbeats)."
    );
    describe_gauge!(
        "weir_sender_last_block_sent",
        "Highest block sequence the sender fully sent, per lane; -1: none (from its heartbeats)."
    );
}
