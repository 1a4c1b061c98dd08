//! Alert latency while the bulk lane is saturated.
//!
//! ```text
//! cargo run --release -p weir-bench --bin alert-latency -- [--alerts 200] [--interval-ms 50] [--rate-mbps 20]
//! cargo run --release -p weir-bench --bin alert-latency -- --processes [--busy-disk] [--dir DIR] [--rate-mbps 10]
//! ```
//!
//! Runs the real sender and receiver over loopback, with a Mosquitto the
//! harness starts (the embedded broker where none is installed): in this
//! process, or, with `--processes`, as the `weir-tx run` and `weir-rx run`
//! programs (built first, release beside release), their state under
//! `--dir` (default: a directory made in the current one, so on its disk;
//! the file system's type is printed). A historian backlog larger than the
//! link can carry in the run is dropped into the bulk spool, so the link is
//! saturated the whole time (`--bulk-rows 0`: no bulk at all); then
//! RFC 5424 syslog messages are sent to the sender's UDP listener at a
//! fixed interval. Latency is from the `sendto` of each message to its
//! arrival at an MQTT subscriber. Prints p50 / p99 / max and whether the
//! bulk lane stayed saturated. `--busy-disk` (with `--processes`) runs a
//! writer beside the receiver on the outbox's disk: 8 MiB written and
//! fsynced, over and over. `--csv FILE` writes each alert's send time and
//! latency; `--rx-bin PATH` runs another `weir-rx` build (before/after).
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
    processes: bool,
    busy_disk: bool,
    dir: Option<std::path::PathBuf>,
    csv: Option<std::path::PathBuf>,
    rx_bin: Option<std::path::PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        alerts: 200,
        interval_ms: 50,
        rate_mbps: 20.0,
        bulk_rows: 3_000_000,
        batch_points: 1,
        processes: false,
        busy_disk: false,
        dir: None,
        csv: None,
        rx_bin: None,
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
            "--processes" => a.processes = true,
            "--busy-disk" => a.busy_disk = true,
            "--dir" => a.dir = Some(v()?.into()),
            "--csv" => a.csv = Some(v()?.into()),
            "--rx-bin" => a.rx_bin = Some(v()?.into()),
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
    if a.processes {
        return processes::measure(&a);
    }
    anyhow::ensure!(!a.busy_disk, "--busy-disk needs --processes");
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
    print_percentiles(&lat);
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
    print_verdict(&lat, got_all);
    drop(tx);
    drop(rx);
    Ok(())
}

/// p50, p99 and max of sorted latencies.
fn print_percentiles(lat: &[Duration]) {
    println!(
        "  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(lat, 0.50).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

/// The target: every alert delivered, p99 at most 20 ms.
fn print_verdict(lat: &[Duration], got_all: bool) {
    let met = got_all && percentile(lat, 0.99) <= Duration::from_millis(20);
    println!(
        "  target p99 <= 20 ms: {}",
        if met { "PASS" } else { "FAIL" }
    );
}

/// `--processes`: the real programs, each in its own process.
mod processes {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::net::{SocketAddr, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use weir_tests::{
        Broker, Process, Site, Subscriber, add_syslog, free_tcp_port, free_udp_addr, free_udp_port,
        write_key,
    };

    use super::{Args, bulk_file};

    /// `weir-tx` and `weir-rx` beside this program, built first with its
    /// profile (the nested build gets a clean `CARGO_*` environment, as
    /// `weir_tests::binaries` does).
    fn programs() -> anyhow::Result<(PathBuf, PathBuf)> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("program directory")?.to_path_buf();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // The same package set as `cargo run -p weir-bench`, so that both
        // builds resolve the same features and neither undoes the other.
        cmd.args([
            "build",
            "-p",
            "weir-tx",
            "-p",
            "weir-rx",
            "-p",
            "weir-bench",
        ]);
        cmd.args(["--bin", "weir-tx", "--bin", "weir-rx"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let keep = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL"].contains(&&*k)
                || k.starts_with("CARGO_PROFILE_")
                || k.starts_with("CARGO_BUILD_");
            if k.starts_with("CARGO_") && !keep {
                cmd.env_remove(&*k);
            }
        }
        anyhow::ensure!(
            cmd.status()?.success(),
            "building weir-tx and weir-rx failed"
        );
        Ok((dir.join("weir-tx"), dir.join("weir-rx")))
    }

    /// The type of the file system holding `path` (`df --output=fstype`).
    fn fs_type(path: &Path) -> String {
        Command::new("df")
            .arg("--output=fstype")
            .arg(path)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().nth(1).map(|l| l.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into())
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    /// A receiver metric (summed over its labels), `None` if unreachable.
    fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
        let (_, _, body) = weir_tests::prom::scrape(addr).ok()?;
        let e = weir_tests::prom::parse(&body).ok()?;
        Some(e.sum(name, &[]))
    }

    /// A disk kept busy: 8 MiB written and fsynced, over and over, in
    /// `dir`. Counts the bytes written.
    fn busy_disk(
        dir: &Path,
        stop: Arc<AtomicBool>,
        written: Arc<AtomicU64>,
    ) -> std::thread::JoinHandle<()> {
        let path = dir.join("busy-disk.bin");
        std::thread::spawn(move || {
            let chunk = vec![0x5a_u8; 8 << 20];
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut f) = std::fs::File::create(&path) else {
                    return;
                };
                if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let _ = std::fs::remove_file(&path);
        })
    }

    /// Start a program and wait (at most 20 s) until its log says `ready`.
    fn start(
        site: &Site,
        program: &Path,
        config: &Path,
        log: &str,
        ready: &str,
    ) -> anyhow::Result<Process> {
        let p = Process::start(
            log,
            program,
            &["run", "--config", &config.display().to_string()],
            site.path(log),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.log_text().contains(ready) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{log} did not start:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    pub(super) fn measure(a: &Args) -> anyhow::Result<()> {
        let (tx_bin, rx_bin) = programs()?;
        // Another receiver build, for before/after comparisons.
        let rx_bin = a.rx_bin.clone().unwrap_or(rx_bin);
        let parent = match &a.dir {
            Some(d) => d.clone(),
            None => std::env::current_dir()?,
        };
        std::fs::create_dir_all(&parent)?;
        let site = Site {
            dir: tempfile::Builder::new()
                .prefix("alert-latency-")
                .tempdir_in(&parent)?,
        };
        let fs = fs_type(site.dir.path());
        let broker = Broker::start();
        let sub = Subscriber::start(broker.port(), &["diode/v1/+/+/alerts/#"]);
        let key = site.path("weir-1.key");
        write_key(&key, 1, rand::random());
        let listen = free_udp_addr();
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let mut rx_cfg = site.rx_config(listen, &key, broker.port(), "bench-rx");
        let mut m = toml::Table::new();
        m.insert("listen".into(), metrics.to_string().into());
        rx_cfg.insert("metrics".into(), m.into());
        let rx_path = site.write_toml("rx.toml", &rx_cfg);
        let syslog_port = free_udp_port();
        let mut tx_cfg = site.tx_config(listen, &key);
        tx_cfg["link"]["rate_mbps"] = toml::Value::Float(a.rate_mbps);
        add_syslog(&mut tx_cfg, Some(syslog_port), None);
        let tx_path = site.write_toml("tx.toml", &tx_cfg);
        let rx = start(&site, &rx_bin, &rx_path, "rx.log", "Receiver started.")?;
        let tx = start(
            &site,
            &tx_bin,
            &tx_path,
            "tx.log",
            "Syslog UDP listener up.",
        )?;

        // The backlog, into the AVEVA spool (`tx_config` keeps the
        // example's spools); written under a temporary name, renamed in.
        let per_file = 250_000;
        for f in 0..a.bulk_rows.div_ceil(per_file) {
            let rows = per_file.min(a.bulk_rows - f * per_file);
            site.drop_file(
                "aveva",
                &format!("bulk_{f:04}.csv"),
                bulk_file(f * per_file, rows).as_bytes(),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let disk = a
            .busy_disk
            .then(|| busy_disk(site.dir.path(), stop.clone(), written.clone()));
        // Let the bulk lane fill the link (and the disk writer start).
        std::thread::sleep(Duration::from_secs(3));
        let load_before = loadavg();
        let bytes_before = metric(metrics, "weir_rx_bytes_total").unwrap_or(0.0);
        let t_start = Instant::now();

        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let mut sent: HashMap<String, Instant> = HashMap::new();
        let mut sent_unix: HashMap<String, f64> = HashMap::new();
        let mut next = Instant::now();
        for i in 0..a.alerts {
            let tag = format!("lat-{i:06}");
            let msg = format!("<132>1 2024-03-10T08:00:00Z ids01 bench - LAT - alert {tag}");
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            sent_unix.insert(tag.clone(), unix);
            sent.insert(tag, Instant::now());
            sock.send_to(msg.as_bytes(), ("127.0.0.1", syslog_port))?;
            next += Duration::from_millis(a.interval_ms);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let alerts = |m: &[weir_tests::Received]| {
            m.iter()
                .filter(|r| r.payload.windows(4).any(|w| w == b"lat-"))
                .count()
        };
        let got_all = sub.wait_for(Duration::from_secs(30), |m| alerts(m) >= a.alerts);
        let elapsed = t_start.elapsed();
        let bytes_after = metric(metrics, "weir_rx_bytes_total").unwrap_or(0.0);
        let spool_left = metric(metrics, "weir_sender_spool_files").unwrap_or(0.0);
        let load_after = loadavg();
        stop.store(true, Ordering::Relaxed);
        if let Some(d) = disk {
            let _ = d.join();
        }
        let disk_mb_s =
            written.load(Ordering::Relaxed) as f64 / 1e6 / (elapsed.as_secs_f64() + 3.0);

        let mut rows: Vec<(f64, Duration)> = sub
            .messages
            .lock()
            .map_err(|_| anyhow::anyhow!("subscriber lock"))?
            .iter()
            .filter_map(|m| {
                let j: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
                let tag = j["message"].as_str()?.rsplit(' ').next()?.to_owned();
                Some((
                    *sent_unix.get(&tag)?,
                    m.at.saturating_duration_since(*sent.get(&tag)?),
                ))
            })
            .collect();
        rows.sort_by(|x, y| x.0.total_cmp(&y.0));
        if let Some(path) = &a.csv {
            let mut f = std::fs::File::create(path)?;
            writeln!(f, "sent_unix_s,latency_ms")?;
            for (t, l) in &rows {
                writeln!(f, "{t:.6},{:.3}", l.as_secs_f64() * 1e3)?;
            }
        }
        let mut lat: Vec<Duration> = rows.iter().map(|r| r.1).collect();
        lat.sort();
        let wire_mbps = (bytes_after - bytes_before) * 8.0 / 1e6 / elapsed.as_secs_f64();
        println!(
            "alert latency, real processes: syslog UDP in -> weir-tx -> weir-rx -> Mosquitto -> subscriber"
        );
        println!(
            "  command: cargo run --release -p weir-bench --bin alert-latency -- --processes --alerts {} --interval-ms {} --rate-mbps {} --bulk-rows {}{}",
            a.alerts,
            a.interval_ms,
            a.rate_mbps,
            a.bulk_rows,
            if a.busy_disk { " --busy-disk" } else { "" }
        );
        println!(
            "  outbox on {fs} ({}); load average {load_before} before, {load_after} after",
            site.dir.path().display()
        );
        if a.busy_disk {
            println!("  busy disk: {disk_mb_s:.0} MB/s written and fsynced beside the receiver");
        }
        println!(
            "  alerts sent {}  received {} (distinct {}, all: {got_all})",
            a.alerts,
            lat.len(),
            alerts(&sub.messages.lock().map_err(|_| anyhow::anyhow!("lock"))?)
        );
        super::print_percentiles(&lat);
        let saturated = a.bulk_rows > 0 && spool_left > 0.0;
        println!(
            "  link: {wire_mbps:.1} Mbit/s received of {} configured; bulk files still waiting at the end: {spool_left} ({})",
            a.rate_mbps,
            if a.bulk_rows == 0 {
                "no bulk"
            } else if saturated {
                "saturated throughout"
            } else {
                "NOT saturated: raise --bulk-rows"
            }
        );
        super::print_verdict(&lat, got_all);
        drop(tx);
        drop(rx);
        Ok(())
    }
}
