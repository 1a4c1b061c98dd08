//! Alert latency while the bulk lane is saturated.
//!
//! ```text
//! cargo run --release -p weir-bench --bin alert-latency -- [--alerts 200] [--interval-ms 50] [--rate-mbps 20]
//! ```
//!
//! Runs the real sender and receiver in this process over loopback, with a
//! Mosquitto the harness starts (the embedded broker where none is
//! installed). A historian backlog larger than the link can carry in the
//! run is dropped into the bulk spool, so the link is saturated the whole
//! time; then RFC 5424 syslog messages are sent to the sender's UDP
//! listener at a fixed interval. Latency is from the `sendto` of each
//! message to its arrival at an MQTT subscriber. Prints p50 / p99 / max and
//! whether the bulk lane stayed saturated.
// A linear measurement script with small numeric conversions.
#![allow(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::cast_sign_loss
)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_shared::config::{RxConfig, TxConfig};
use weir_shared::seal::{Keyring, Psk};
use weir_shared::wire::KeyId;
use weir_tests::{Broker, Subscriber, free_udp_port};

struct Args {
    alerts: usize,
    interval_ms: u64,
    rate_mbps: f64,
    bulk_rows: usize,
    batch_points: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        alerts: 200,
        interval_ms: 50,
        rate_mbps: 20.0,
        bulk_rows: 3_000_000,
        batch_points: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--alerts" => a.alerts = v()?.parse()?,
            "--interval-ms" => a.interval_ms = v()?.parse()?,
            "--rate-mbps" => a.rate_mbps = v()?.parse()?,
            "--bulk-rows" => a.bulk_rows = v()?.parse()?,
            "--batch-points" => a.batch_points = v()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// Historian rows with noisy values (they compress like real data, not
/// like a constant).
fn bulk_file(first: usize, rows: usize) -> String {
    let mut s = String::from("DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ first as u64;
    for i in first..first + rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = (x % 1_000_000) as f64 / 1000.0;
        let (h, m, sec) = (i / 3600 % 24, i / 60 % 60, i % 60);
        let _ = writeln!(
            s,
            "2024-03-{:02} {h:02}:{m:02}:{sec:02}.0000000,U{:04}.PV,{v},{v},0,192,192",
            i / 86_400 % 28 + 1,
            i % 5000
        );
    }
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    // Broker and subscriber run on runtimes of their own.
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["diode/v1/bench/weir/alerts/#"]);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(measure(&a, &broker, &sub))
}

async fn measure(a: &Args, broker: &Broker, sub: &Subscriber) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("spool");
    let keyring = Keyring::new([Psk::generate(KeyId(1), &ring::rand::SystemRandom::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?]);
    let (rx_port, syslog_port) = (free_udp_port(), free_udp_port());
    let rx_cfg: RxConfig = toml::from_str(&format!(
        "[link]\nlisten = \"127.0.0.1:{rx_port}\"\n[keys]\nfiles = [\"in-memory\"]\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nsite = \"bench\"\nclient_id = \"weir-bench-rx\"\nbatch_points = {}\n[outbox]\npath = \"{}\"\n[ledger]\ngaps_path = \"{}\"\nsessions_path = \"{}\"\n",
        broker.port(),
        a.batch_points,
        dir.path().join("rx-outbox.redb").display(),
        dir.path().join("rx-gaps.jsonl").display(),
        dir.path().join("rx-sessions.json").display()
    ))?;
    let rx = weir_rx::run(rx_cfg.validate()?, keyring.clone()).await?;
    let tx_cfg: TxConfig = toml::from_str(&format!(
        "[link]\ndestination = \"127.0.0.1:{rx_port}\"\nbind = \"127.0.0.1:0\"\nrate_mbps = {}\n[keys]\nfiles = [\"in-memory\"]\nactive_key_id = 1\n[alert_queue]\npath = \"{}\"\n[sender]\nstate_path = \"{}\"\n\
         [[spool]]\nname = \"bulk\"\ndir = \"{}\"\nformat = \"aveva-csv\"\ntz = \"UTC\"\nscan_interval = \"100ms\"\n\
         [[syslog]]\nname = \"syslog\"\nudp = \"127.0.0.1:{syslog_port}\"\n",
        a.rate_mbps,
        dir.path().join("tx-alert-queue.redb").display(),
        dir.path().join("tx-state.json").display(),
        spool.display()
    ))?;
    let tx = weir_tx::run(tx_cfg.validate()?, keyring, [0; 8]).await?;

    // The backlog: written under a temporary name, renamed in.
    let incoming = spool.join("incoming");
    std::fs::create_dir_all(&incoming)?;
    let per_file = 250_000;
    for f in 0..a.bulk_rows.div_ceil(per_file) {
        let rows = per_file.min(a.bulk_rows - f * per_file);
        let tmp = incoming.join(format!("bulk_{f:04}.csv.part"));
        std::fs::write(&tmp, bulk_file(f * per_file, rows))?;
        std::fs::rename(&tmp, incoming.join(format!("bulk_{f:04}.csv")))?;
    }
    // Let the bulk lane fill the link before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let wire_before = tx.telemetry.counters().wire_bytes;
    let t_start = Instant::now();

    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    for i in 0..a.alerts {
        let tag = format!("lat-{i:06}");
        let msg = format!("<132>1 2024-03-10T08:00:00Z ids01 bench - LAT - alert {tag}");
        sent.insert(tag, Instant::now());
        sock.send_to(msg.as_bytes(), ("127.0.0.1", syslog_port))?;
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
    }
    let got_all = sub.wait_for(Duration::from_secs(30), |m| m.len() >= a.alerts);
    let elapsed = t_start.elapsed();
    let wire_mbps = (tx.telemetry.counters().wire_bytes - wire_before) as f64 * 8.0
        / 1e6
        / elapsed.as_secs_f64();
    let still_queued = tx
        .telemetry
        .spool_depth
        .load(std::sync::atomic::Ordering::Relaxed);
    let records_sent = tx.telemetry.counters().records;

    let mut lat: Vec<Duration> = sub
        .messages
        .lock()
        .map_err(|_| anyhow::anyhow!("subscriber lock"))?
        .iter()
        .filter_map(|m| {
            let j: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            let tag = j["message"].as_str()?.rsplit(' ').next()?.to_owned();
            Some(m.at.saturating_duration_since(*sent.get(&tag)?))
        })
        .collect();
    lat.sort();
    println!("alert latency, syslog UDP in -> MQTT subscriber out, bulk lane saturated");
    println!(
        "  command: cargo run --release -p weir-bench --bin alert-latency -- --alerts {} --interval-ms {} --rate-mbps {}",
        a.alerts, a.interval_ms, a.rate_mbps
    );
    println!(
        "  alerts sent {}  received {}  (all: {got_all})",
        a.alerts,
        lat.len()
    );
    println!(
        "  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    let saturated = still_queued > 0 || records_sent < a.bulk_rows as u64;
    println!(
        "  link: {wire_mbps:.1} Mbit/s on the wire of {} configured; bulk backlog left: {} ({})",
        a.rate_mbps,
        a.bulk_rows as u64 - records_sent.min(a.bulk_rows as u64),
        if saturated {
            "saturated throughout"
        } else {
            "NOT saturated: raise --bulk-rows"
        }
    );
    let p99 = percentile(&lat, 0.99);
    println!(
        "  target p99 < 20 ms: {}",
        if p99 < Duration::from_millis(20) && got_all {
            "PASS"
        } else {
            "FAIL"
        }
    );
    drop(tx);
    drop(rx);
    Ok(())
}
