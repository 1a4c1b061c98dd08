//! `weir-demo`: the whole pair on one machine, on an embedded default.
//!
//! Starts an in-process MQTT broker, a receiver, a lossy loopback "diode"
//! (2 % loss by default, so FEC has something to repair) and a sender, feeds
//! the sample historian exports plus a generated bulk file, and prints what
//! crossed. Then it keeps feeding a small file every two seconds so the
//! flow can be watched live with the printed `mosquitto_sub` line, until
//! Ctrl-C (or at once with `--once`).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_shared::config::{RxConfig, TxConfig};
use weir_shared::seal::{Keyring, Psk};
use weir_shared::wire::KeyId;
use weir_tests::{Impairment, LossyLink};

const PI_SAMPLE: &[u8] = include_bytes!("../../fixtures/pi_webapi_recorded.json");
const AVEVA_SAMPLE: &[u8] = include_bytes!("../../fixtures/aveva_history.csv");

struct Args {
    once: bool,
    loss_pct: f64,
    rows: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        once: false,
        loss_pct: 2.0,
        rows: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--once" => a.once = true,
            "--loss" => a.loss_pct = it.next().context("--loss PCT")?.parse()?,
            "--rows" => a.rows = it.next().context("--rows N")?.parse()?,
            "-h" | "--help" => {
                println!("weir-demo [--once] [--loss PCT (default 2)] [--rows N (default 100000)]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}; try --help"),
        }
    }
    Ok(a)
}

fn aveva_rows(day: u32, rows: usize) -> String {
    let mut s = String::from("DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n");
    for i in 0..rows {
        // One row a second: a day holds 86 400, then the next day starts
        // (a wrapped clock would repeat rows, which the receiver withholds
        // as exact duplicates).
        let day = day + u32::try_from(i / 86_400).unwrap_or(0);
        let (h, m, sec) = (i / 3600 % 24, i / 60 % 60, i % 60);
        let v = 50.0 + ((i % 600) as f64 / 10.0).sin() * 5.0;
        let _ = writeln!(
            s,
            "2024-03-{day:02} {h:02}:{m:02}:{sec:02}.0000000,LINE1.FT{:03}.PV,{v:.3},{v:.3},0,192,192",
            i % 50
        );
    }
    s
}

fn drop_file(spool: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let incoming = spool.join("incoming");
    std::fs::create_dir_all(&incoming)?;
    let tmp = incoming.join(format!("{name}.part"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, incoming.join(name))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let dir = tempfile::tempdir()?;
    let base = dir.path();

    // 1. An in-process broker on a free loopback port.
    let broker_port = weir_tests::start_embedded_broker().await?;

    // 2. One fresh key for both sides.
    let psk = Psk::generate(KeyId(1), &ring::rand::SystemRandom::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keyring = Keyring::new([psk]);

    // 3. The receiver. The key travels in memory here; `keys.files` only
    // has to name something for validation.
    let rx_port = weir_tests::free_udp_port();
    let rx_toml = format!(
        "[link]\nlisten = \"127.0.0.1:{rx_port}\"\n[keys]\nfiles = [\"{k}\"]\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nsite = \"demo\"\nclient_id = \"weir-demo-rx\"\n[outbox]\npath = \"{o}\"\n[ledger]\ngaps_path = \"{g}\"\nsessions_path = \"{s}\"\n",
        k = base.join("unused.key").display(),
        o = base.join("rx-outbox.redb").display(),
        g = base.join("rx-gaps.jsonl").display(),
        s = base.join("rx-sessions.json").display(),
    );
    let rx_cfg = toml::from_str::<RxConfig>(&rx_toml)?.validate()?;
    let rx = weir_rx::run(rx_cfg, keyring.clone()).await?;

    // 4. The "diode": a lossy loopback relay.
    let loss = args.loss_pct / 100.0;
    let link = LossyLink::start(
        rx.local_addr,
        Impairment {
            drop: loss,
            ..Impairment::clean(7)
        },
    );

    // 5. The sender, with two spools.
    let (pi, aveva) = (base.join("spool/pi"), base.join("spool/aveva"));
    let tx_toml = format!(
        "[link]\ndestination = \"{dst}\"\nbind = \"127.0.0.1:0\"\nrate_mbps = 500.0\n[keys]\nfiles = [\"{k}\"]\nactive_key_id = 1\n[alert_queue]\npath = \"{q}\"\n[sender]\nstate_path = \"{st}\"\n\
         [[spool]]\nname = \"pi\"\ndir = \"{pi}\"\nformat = \"pi-webapi-json\"\nscan_interval = \"200ms\"\n\
         [[spool]]\nname = \"aveva\"\ndir = \"{av}\"\nformat = \"aveva-csv\"\ntz = \"America/Chicago\"\ndiscrete_tags = [\"PUMP7.Running\"]\nscan_interval = \"200ms\"\n",
        dst = link.input,
        k = base.join("unused.key").display(),
        pi = pi.display(),
        av = aveva.display(),
        q = base.join("tx-alert-queue.redb").display(),
        st = base.join("tx-state.json").display(),
    );
    let tx_cfg = toml::from_str::<TxConfig>(&tx_toml)?.validate()?;
    let tx = weir_tx::run(tx_cfg, keyring, [0; 8]).await?;

    println!(
        "Weir demo: broker 127.0.0.1:{broker_port}, receiver {}, lossy link {} ({:.1} % loss)",
        rx.local_addr, link.input, args.loss_pct
    );
    println!(
        "Watch it live:\n  mosquitto_sub -h 127.0.0.1 -p {broker_port} -t 'uns/#' -t 'diode/#' -v\n"
    );

    // 6. Feed the sample exports and a bulk file.
    drop_file(&pi, "TT101.PV.json", PI_SAMPLE)?;
    drop_file(&aveva, "aveva_history.csv", AVEVA_SAMPLE)?;
    drop_file(&aveva, "bulk_0001.csv", aveva_rows(1, args.rows).as_bytes())?;
    let expected = 7 + 8 + args.rows as u64;
    let started = Instant::now();
    let deadline = started + Duration::from_mins(2);
    let mut shown = Instant::now();
    let published_all = || {
        let r = rx.stats.snapshot();
        r.records >= expected && r.acked >= expected.saturating_sub(r.dq_duplicates)
    };
    while !published_all() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let r = rx.stats.snapshot();
            println!(
                "  {:>5.1} s: {} of {expected} records received, {} messages acknowledged by the broker",
                started.elapsed().as_secs_f64(),
                r.records,
                r.acked
            );
        }
    }
    let ok = report(started.elapsed(), &tx, &rx, &link, expected);
    if !args.once {
        feed_live(&aveva, &rx).await?;
    }
    tx.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.shutdown().await?;
    drop(link);
    if ok {
        Ok(())
    } else {
        anyhow::bail!("records were lost")
    }
}

/// Print what crossed; whether every record arrived.
fn report(
    elapsed: Duration,
    tx: &weir_tx::TxHandle,
    rx: &weir_rx::RxHandle,
    link: &LossyLink,
    expected: u64,
) -> bool {
    let t = tx.telemetry.counters();
    let r = rx.stats.snapshot();
    println!("What crossed in {:.2} s:", elapsed.as_secs_f64());
    println!(
        "  records   sent {:>9}  received {:>9}  published+acked {:>9}",
        t.records, r.records, r.acked
    );
    println!(
        "  blocks    sent {:>9}  decoded  {:>9}  lost {}",
        t.blocks, r.blocks_ok, r.blocks_lost
    );
    println!(
        "  datagrams sent {:>9}  dropped by the link {}  repair symbols sent {}",
        t.datagrams,
        link.stats.dropped.load(Ordering::Relaxed),
        tx.telemetry.repair_symbols.load(Ordering::Relaxed)
    );
    println!(
        "  FEC: {} lost source symbols rebuilt from repair symbols",
        r.fec_repaired
    );
    println!(
        "  wire: {:.1} MB ({:.1} Mbit/s)",
        t.wire_bytes as f64 / 1e6,
        t.wire_bytes as f64 * 8.0 / 1e6 / elapsed.as_secs_f64()
    );
    // Judged by what the broker acknowledged: every record a message of
    // its own (the receiver's events come on top), none lost. An exact
    // duplicate (the sample export has one) is withheld and counted.
    if r.dq_duplicates > 0 {
        println!(
            "  {} exact duplicate points withheld (counted, not published)",
            r.dq_duplicates
        );
    }
    let to_publish = expected.saturating_sub(r.dq_duplicates);
    let short = [
        (r.records < expected).then(|| format!("{} records not received", expected - r.records)),
        (r.blocks_lost > 0).then(|| format!("{} blocks lost", r.blocks_lost)),
        (r.acked < to_publish).then(|| {
            format!(
                "{} records not acknowledged by the broker",
                to_publish - r.acked
            )
        }),
    ];
    let short: Vec<String> = short.into_iter().flatten().collect();
    if short.is_empty() {
        println!("  every record arrived and the broker acknowledged it");
    } else {
        println!("  NOT every record arrived: {}", short.join(", "));
    }
    short.is_empty()
}

/// Keep feeding a small file every two seconds until Ctrl-C.
async fn feed_live(aveva: &Path, rx: &weir_rx::RxHandle) -> anyhow::Result<()> {
    println!("\nFeeding a small file every 2 s; Ctrl-C to stop.");
    let mut n = 2u32;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(2)) => {
                drop_file(aveva, &format!("live_{n:05}.csv"), aveva_rows(n % 28 + 1, 100).as_bytes())?;
                n += 1;
                let r = rx.stats.snapshot();
                println!("  records {:>9}  blocks {:>7}  FEC-repaired symbols {:>6}  lost blocks {}",
                    r.records, r.blocks_ok, r.fec_repaired, r.blocks_lost);
            }
        }
    }
}
