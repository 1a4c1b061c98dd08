//! The Prometheus endpoints end to end: the real `weir-tx` and `weir-rx`
//! with `[metrics] listen`, a spool file sent over a clean relay into a
//! real broker, then both endpoints scraped over HTTP and read with a
//! strict parser of the text format (`weir_tests::prom`).
//!
//! ```text
//!  aveva file ──> weir-tx ══UDP══> LossyLink (clean) ══> weir-rx ──> broker
//!                    │ GET /metrics                         │ GET /metrics (weir_rx_*, weir_sender_*)
//!                    └──────────────> this test <───────────┘
//! ```
// Long, linear test scripts read best as they are.
#![allow(clippy::too_many_lines)]
// Sample values are whole counts carried as f64 (exact below 2^53): they
// are compared exactly on purpose.
#![allow(clippy::float_cmp)]

use std::net::SocketAddr;
use std::time::Duration;

use weir_tests::prom::{Exposition, parse, scrape};
use weir_tests::{
    Broker, Impairment, LossyLink, Process, Site, aveva_export, free_tcp_port, free_udp_port,
    start_rx, start_tx, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x3c; 32];
/// Rows of the spool file: a few dozen bulk blocks.
const ROWS: usize = 6_000;

/// Scrape `addr` and parse it strictly; panics with the text on any fault.
fn read(addr: SocketAddr, who: &Process) -> Exposition {
    let (status, content_type, body) =
        scrape(addr).unwrap_or_else(|e| panic!("scraping {addr}: {e}\n{}", who.log_text()));
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain"),
        "content type {content_type:?}"
    );
    parse(&body).unwrap_or_else(|e| panic!("{addr}: {e}\n--- exposition ---\n{body}"))
}

/// Scrape until `ok` holds (at most `timeout`); the last exposition.
fn read_until(
    addr: SocketAddr,
    who: &Process,
    timeout: Duration,
    mut ok: impl FnMut(&Exposition) -> bool,
) -> Exposition {
    let mut last = Exposition::default();
    wait_until(timeout, || {
        last = read(addr, who);
        ok(&last)
    });
    last
}

fn v(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.value(name, labels)
        .unwrap_or_else(|| panic!("no single sample {name}{labels:?}"))
}

/// Every family is named `weir_…`, and counters and gauges are what their
/// names say.
fn check_names(e: &Exposition, prefixes: &[&str]) {
    assert!(!e.samples.is_empty());
    for (name, f) in &e.families {
        assert!(
            prefixes.iter().any(|p| name.starts_with(p)),
            "{name} is not named weir_…"
        );
        assert_eq!(
            name.ends_with("_total"),
            f.kind == "counter",
            "{name} is a {}",
            f.kind
        );
    }
}

#[test]
fn both_endpoints_serve_strict_text_and_real_values() {
    let site = Site::new();
    let broker = Broker::start();
    let (ktx, krx) = (site.path("tx.key"), site.path("rx.key"));
    write_key(&ktx, 1, KEY);
    write_key(&krx, 1, KEY);
    let rx_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let rx_metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let tx_metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let id = format!("weir-rx-metrics-{}", std::process::id());
    let mut rx_cfg = site.rx_config(rx_addr, &krx, broker.port(), &id);
    let mut m = toml::Table::new();
    m.insert("listen".into(), rx_metrics.to_string().into());
    rx_cfg.insert("metrics".into(), m.into());
    let rx_cfg = site.write_toml("rx.toml", &rx_cfg);
    let mut rx = start_rx(&site, &rx_cfg, "rx.log");
    let link = LossyLink::start(rx_addr, Impairment::clean(11));
    let mut tx_cfg = site.tx_config(link.input, &ktx);
    let mut m = toml::Table::new();
    m.insert("listen".into(), tx_metrics.to_string().into());
    tx_cfg.insert("metrics".into(), m.into());
    tx_cfg["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(16 * 1024);
    let tx_cfg = site.write_toml("tx.toml", &tx_cfg);
    let mut tx = start_tx(&site, &tx_cfg, "tx.log");

    // Before any data: both endpoints answer, already strict.
    let before = read_until(rx_metrics, &rx, Duration::from_secs(10), |e| {
        e.value("weir_rx_link_up", &[]) == Some(1.0)
    });
    assert_eq!(
        before.value("weir_rx_link_up", &[]),
        Some(1.0),
        "heartbeats bring the link up"
    );
    assert!(wait_until(Duration::from_secs(10), || scrape(tx_metrics)
        .is_ok_and(|(s, ..)| s == 200)));

    site.drop_file(
        "aveva",
        "metrics_0001.csv",
        aveva_export(2, ROWS).as_bytes(),
    );
    let sent = wait_until(Duration::from_mins(1), || {
        site.path("spool/aveva/done/metrics_0001.csv").exists()
    });
    assert!(
        sent,
        "the sender never finished the file:\n{}",
        tx.log_text()
    );

    // The sender's own endpoint, once its counters stopped moving.
    let mut last_blocks = -1.0;
    let txm = read_until(tx_metrics, &tx, Duration::from_secs(20), |e| {
        let b = e.value("weir_tx_blocks_total", &[]).unwrap_or(-1.0);
        let steady = b > 0.0 && (b - last_blocks).abs() < f64::EPSILON;
        last_blocks = b;
        steady && e.value("weir_tx_files_done_total", &[]) == Some(1.0)
    });
    check_names(&txm, &["weir_tx_"]);
    let blocks = v(&txm, "weir_tx_blocks_total", &[]);
    let datagrams = v(&txm, "weir_tx_datagrams_total", &[]);
    let repair = v(&txm, "weir_tx_repair_symbols_total", &[]);
    assert!(blocks >= 5.0, "{blocks} blocks");
    assert!(datagrams > blocks && repair > 0.0);
    assert_eq!(v(&txm, "weir_tx_records_total", &[]), ROWS as f64);
    assert!(v(&txm, "weir_tx_bytes_total", &[]) >= datagrams * 100.0);
    assert_eq!(v(&txm, "weir_tx_files_done_total", &[]), 1.0);
    assert_eq!(v(&txm, "weir_tx_spool_files", &[]), 0.0);
    assert_eq!(
        v(&txm, "weir_tx_pace_rate_bytes_per_second", &[]),
        25_000_000.0,
        "200 Mbit/s"
    );
    for reason in [
        "alert_queue_full",
        "alert_malformed",
        "record_too_large",
        "line_rejected",
        "file_quarantined",
        "send_error",
    ] {
        assert_eq!(
            v(&txm, "weir_tx_drops_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    assert!(v(&txm, "weir_tx_last_block_sent", &[("lane", "bulk")]) >= blocks - 1.0);
    let info: Vec<_> = txm.find("weir_tx_session_info", &[]).collect();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["sender_id"], "1");
    let session = info[0].labels["session"].clone();

    // The receiver's endpoint, once every block is delivered, the broker
    // acknowledged every point and the last heartbeat reported the sender's
    // final counters.
    let rxm = read_until(rx_metrics, &rx, Duration::from_mins(1), |e| {
        let sender = [("session", session.as_str())];
        e.value("weir_rx_blocks_decoded_total", &[]) == Some(blocks)
            && e.value("weir_rx_mqtt_acked_total", &[]) >= Some(ROWS as f64)
            && e.value("weir_rx_outbox_entries", &[("table", "bulk")]) == Some(0.0)
            && e.value("weir_sender_blocks_total", &sender) == Some(blocks)
            && e.value("weir_sender_datagrams_total", &sender) == Some(datagrams)
    });
    check_names(&rxm, &["weir_rx_", "weir_sender_"]);
    let sender = [("sender_id", "1"), ("session", session.as_str())];
    assert_eq!(
        v(&rxm, "weir_rx_blocks_decoded_total", &[]),
        blocks,
        "every block sent was decoded"
    );
    assert!(v(&rxm, "weir_rx_datagrams_total", &[]) >= datagrams);
    assert!(v(&rxm, "weir_rx_bytes_total", &[]) >= v(&txm, "weir_tx_bytes_total", &[]));
    assert_eq!(v(&rxm, "weir_rx_records_total", &[]), ROWS as f64);
    for lost in [
        "weir_rx_blocks_lost_total",
        "weir_rx_blocks_shed_total",
        "weir_rx_outbox_refused_total",
        "weir_rx_records_lost_total",
        "weir_rx_gap_entries_total",
    ] {
        assert_eq!(v(&rxm, lost, &[]), 0.0, "{lost} on a clean link");
    }
    // Drops: one counter, one series per reason, none on a clean link.
    let drops: Vec<_> = rxm.find("weir_rx_drops_total", &[]).collect();
    assert_eq!(drops.len(), 20, "{drops:?}");
    for reason in [
        "crc",
        "malformed",
        "forged",
        "unverified",
        "pending_evicted",
        "auth",
        "replay",
        "stale",
        "unknown_key",
    ] {
        assert_eq!(
            v(&rxm, "weir_rx_drops_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    // MQTT: everything acknowledged, nothing in flight.
    let acked = v(&rxm, "weir_rx_mqtt_acked_total", &[]);
    assert!(v(&rxm, "weir_rx_mqtt_published_total", &[]) >= acked);
    assert!(wait_until(Duration::from_secs(10), || {
        read(rx_metrics, &rx).value("weir_rx_mqtt_inflight", &[]) == Some(0.0)
    }));
    assert!(rxm.value("weir_rx_outbox_bytes", &[]).is_some());
    assert_eq!(rxm.find("weir_rx_outbox_entries", &[]).count(), 3);
    // Data quality: every point judged once, by its worst flag.
    assert_eq!(
        rxm.sum("weir_rx_dq_points_total", &[]),
        ROWS as f64,
        "{:?}",
        rxm.find("weir_rx_dq_points_total", &[]).collect::<Vec<_>>()
    );
    assert_eq!(rxm.find("weir_rx_dq_points_total", &[]).count(), 5);
    assert_eq!(
        rxm.find("weir_rx_dq_check_flags_total", &[]).count(),
        18 * 3
    );
    assert!(v(&rxm, "weir_rx_dq_tags", &[]) >= 3.0, "LOAD.T0..T2");
    // FEC: the bulk lane's window, with the ratio the sender announced.
    assert!(v(&rxm, "weir_rx_fec_window_blocks", &[("lane", "bulk")]) >= 1.0);
    assert_eq!(
        v(&rxm, "weir_rx_fec_repair_ratio", &[("lane", "bulk")]),
        0.25
    );
    assert!(
        v(
            &rxm,
            "weir_rx_fec_headroom_min_symbols",
            &[("lane", "bulk")]
        ) >= 1.0
    );
    assert_eq!(
        v(
            &rxm,
            "weir_rx_fec_window_symbols_missing",
            &[("lane", "bulk")]
        ),
        0.0
    );
    assert_eq!(v(&rxm, "weir_rx_lag_blocks", &[("lane", "bulk")]), 0.0);
    assert_eq!(v(&rxm, "weir_rx_link_up", &[]), 1.0);
    assert!(v(&rxm, "weir_rx_heartbeat_age_seconds", &[]) < 3.0);
    // Sessions: the receiver names the sender's session.
    let sessions: Vec<_> = rxm.find("weir_rx_sender_session_info", &[]).collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].labels["session"], session);
    assert_eq!(sessions[0].labels["sender_id"], "1");
    assert_eq!(sessions[0].labels["role"], "daemon");
    // The sender's health, re-exported by the receiver from its heartbeats.
    assert_eq!(v(&rxm, "weir_sender_blocks_total", &sender), blocks);
    assert_eq!(v(&rxm, "weir_sender_datagrams_total", &sender), datagrams);
    assert_eq!(v(&rxm, "weir_sender_repair_symbols_total", &sender), repair);
    assert_eq!(v(&rxm, "weir_sender_records_total", &sender), ROWS as f64);
    assert_eq!(
        v(&rxm, "weir_sender_pace_rate_bytes_per_second", &sender),
        25_000_000.0
    );
    assert_eq!(v(&rxm, "weir_sender_spool_files", &sender), 0.0);
    assert_eq!(v(&rxm, "weir_sender_spool_bytes", &sender), 0.0);
    assert_eq!(
        v(
            &rxm,
            "weir_sender_drops_total",
            &[("session", session.as_str()), ("reason", "send_error")]
        ),
        0.0
    );
    assert_eq!(
        rxm.find("weir_sender_drops_total", &[("session", session.as_str())])
            .count(),
        6
    );
    assert!(v(&rxm, "weir_sender_uptime_seconds", &sender) > 0.0);
    // HELP text everywhere, and the promised families are there.
    for family in [
        "weir_rx_datagrams_total",
        "weir_rx_drops_total",
        "weir_rx_blocks_decoded_total",
        "weir_rx_blocks_lost_total",
        "weir_rx_fec_symbols_missing_total",
        "weir_rx_fec_headroom_p99_ratio",
        "weir_rx_outbox_bytes",
        "weir_rx_outbox_entries",
        "weir_rx_lag_blocks",
        "weir_rx_mqtt_inflight",
        "weir_rx_mqtt_acked_total",
        "weir_rx_records_lost_total",
        "weir_rx_gap_entries_total",
        "weir_rx_dq_points_total",
        "weir_rx_sender_session_info",
        "weir_sender_blocks_total",
    ] {
        let f = rxm
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no {family}"));
        assert!(f.help.len() > 10, "{family}: {:?}", f.help);
    }

    check_docs(&txm, &rxm);

    let _ = tx.terminate(Duration::from_secs(15));
    let counters = stop_rx(&mut rx);
    // The endpoint and the final counters tell the same story.
    assert_eq!(counters["blocks_ok"].as_f64(), Some(blocks), "{counters}");
    assert_eq!(counters["records"].as_f64(), Some(ROWS as f64));
}

/// The `weir_…` names in `text` (a token ending in `_` is a prefix, not a
/// name).
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("weir_") && !w.ends_with('_'))
        .map(str::to_owned)
        .collect()
}

/// The README's Monitor section documents every family both programs
/// export and nothing else, and the Grafana dashboard queries only
/// families the receiver exports.
fn check_docs(txm: &Exposition, rxm: &Exposition) {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("### Monitor")
        .expect("README has a Monitor section");
    let len = readme[start..]
        .find("\n### Gap ledger")
        .expect("Monitor ends at Gap ledger");
    let documented = names_in(&readme[start..start + len]);
    let exported: std::collections::BTreeSet<String> = rxm
        .families
        .keys()
        .chain(txm.families.keys())
        .cloned()
        .collect();
    for name in &exported {
        // weir-tx's own names are documented as the weir_sender_ ones.
        let as_sender = name.replacen("weir_tx_", "weir_sender_", 1);
        assert!(
            documented.contains(name) || documented.contains(&as_sender),
            "{name} is not in the README's Monitor section"
        );
    }
    for name in &documented {
        assert!(
            exported.contains(name),
            "the README documents {name}, which neither program exports"
        );
    }
    let dashboard = include_str!("../../docs/grafana/weir.json");
    let panels: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard is JSON");
    assert!(panels["panels"].as_array().is_some_and(|p| p.len() > 10));
    for name in names_in(dashboard) {
        assert!(
            rxm.families.contains_key(&name),
            "the dashboard queries {name}, which weir-rx does not export"
        );
    }
}

/// The endpoint is off without `[metrics]`, and a bad address is refused
/// at startup with the key named.
#[test]
fn metrics_listen_is_checked_at_startup() {
    let site = Site::new();
    let key = site.path("rx.key");
    write_key(&key, 1, KEY);
    let mut cfg = site.rx_config(
        SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
        &key,
        1883,
        "weir-rx-metrics-check",
    );
    let mut m = toml::Table::new();
    m.insert("listen".into(), "127.0.0.1".into());
    cfg.insert("metrics".into(), m.into());
    let path = site.write_toml("rx.toml", &cfg);
    let out = weir_tests::run_bounded(
        std::process::Command::new(&weir_tests::binaries().rx).args([
            "check-config",
            "--config",
            &path.display().to_string(),
        ]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("metrics.listen"), "{err}");
}

// ----------------------------------------------------------------- parser

#[test]
fn the_parser_takes_a_well_formed_exposition() {
    let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\na_total{x=\"2\"} 0 1700000000000\n# a comment\n# HELP g A gauge.\n# TYPE g gauge\ng -1.5e3\ng{l=\"NaN\"} NaN\ng{l=\"i\"} +Inf\n";
    let e = parse(text).expect("valid");
    assert_eq!(e.samples.len(), 5);
    assert_eq!(e.value("a_total", &[("x", "1")]), Some(3.0));
    assert_eq!(e.samples[0].labels["y"], "q\"\\\n");
    assert_eq!(e.value("g", &[("l", "i")]), Some(f64::INFINITY));
    assert_eq!(e.families["g"].kind, "gauge");
    assert_eq!(e.families["a_total"].help, "Things.");
}

#[test]
fn the_parser_rejects_malformed_expositions() {
    let head = "# HELP a_total Things.\n# TYPE a_total counter\n";
    let bad = [
        ("no newline at the end", format!("{head}a_total 1")),
        ("bad value", format!("{head}a_total one\n")),
        ("bad value", format!("{head}a_total 0x10\n")),
        ("bad value", format!("{head}a_total \n")),
        ("bad name", format!("{head}9a_total 1\n")),
        ("bad name", "# HELP a-b x\n# TYPE a-b gauge\na-b 1\n".into()),
        ("bad label name", format!("{head}a_total{{9x=\"1\"}} 1\n")),
        (
            "reserved label name",
            format!("{head}a_total{{__x=\"1\"}} 1\n"),
        ),
        ("unquoted label", format!("{head}a_total{{x=1}} 1\n")),
        ("unterminated label", format!("{head}a_total{{x=\"1}} 1\n")),
        ("bad escape", format!("{head}a_total{{x=\"\\t\"}} 1\n")),
        (
            "label twice",
            format!("{head}a_total{{x=\"1\",x=\"2\"}} 1\n"),
        ),
        ("series twice", format!("{head}a_total 1\na_total 2\n")),
        (
            "second HELP",
            format!("{head}# HELP a_total Again.\na_total 1\n"),
        ),
        (
            "second TYPE",
            format!("{head}# TYPE a_total counter\na_total 1\n"),
        ),
        ("bad type", "# HELP a x\n# TYPE a countr\na 1\n".into()),
        ("no TYPE", "# HELP a x\na 1\n".into()),
        ("no HELP", "# TYPE a gauge\na 1\n".into()),
        ("empty HELP", "# HELP a \n# TYPE a gauge\na 1\n".into()),
        ("undeclared", "a 1\n".into()),
        (
            "counter without _total",
            "# HELP a x\n# TYPE a counter\na 1\n".into(),
        ),
        ("negative counter", format!("{head}a_total -1\n")),
        ("NaN counter", format!("{head}a_total NaN\n")),
        ("bad timestamp", format!("{head}a_total 1 soon\n")),
        ("trailing field", format!("{head}a_total 1 2 3\n")),
        (
            "split family",
            format!(
                "{head}a_total{{x=\"1\"}} 1\n# HELP g x\n# TYPE g gauge\ng 1\na_total{{x=\"2\"}} 1\n"
            ),
        ),
        (
            "TYPE after samples",
            format!("{head}a_total 1\n# TYPE a_total counter\n"),
        ),
    ];
    for (what, text) in bad {
        assert!(parse(&text).is_err(), "{what} accepted:\n{text}");
    }
}
