//! The loss ledger, end to end: the real binaries through the seeded lossy
//! relay. Within the FEC budget nothing is lost or duplicated; beyond it,
//! every record that did not arrive is in the gap ledger, counted exactly.
// Long, linear test scripts read best as they are.
#![allow(clippy::too_many_lines)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::{
    Broker, Impairment, LossyLink, Process, Site, Subscriber, aveva_export, binaries,
    free_udp_port, run_bounded, start_rx, start_tx, stop_rx, write_key,
};

const KEY: [u8; 32] = [0x5A; 32];

/// The bulk lane settings the README recommends for links with up to 10 %
/// random loss or bursts of up to 200 datagrams.
struct Fec {
    ratio: f64,
    min_repair: i64,
    interleave: i64,
}

const DOCUMENTED: Fec = Fec {
    ratio: 0.5,
    min_repair: 16,
    interleave: 16,
};

struct Rig {
    site: Site,
    _broker: Broker,
    sub: Subscriber,
    rx: Process,
    tx: Process,
    link: LossyLink,
    rx_cfg: std::path::PathBuf,
}

fn rig(imp: Impairment, fec: &Fec) -> Rig {
    let site = Site::new();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let key = site.path("k.key");
    write_key(&key, 1, KEY);
    let rx_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mut rx_cfg = site.rx_config(rx_addr, &key, broker.port(), "weir-ledger-test");
    rx_cfg["limits"]["block_timeout"] = toml::Value::String("2s".into());
    rx_cfg["limits"]["gap_timeout"] = toml::Value::String("3s".into());
    let rx_cfg = site.write_toml("rx.toml", &rx_cfg);
    let rx = start_rx(&site, &rx_cfg, "rx.log");
    let link = LossyLink::start(rx_addr, imp);
    let mut cfg = site.tx_config(link.input, &key);
    cfg["lanes"]["bulk"]["repair_ratio"] = toml::Value::Float(fec.ratio);
    cfg["lanes"]["bulk"]["min_repair"] = toml::Value::Integer(fec.min_repair);
    cfg["lanes"]["bulk"]["interleave_blocks"] = toml::Value::Integer(fec.interleave);
    cfg["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(64 * 1024);
    cfg["link"]["rate_mbps"] = toml::Value::Float(100.0);
    let tx_cfg = site.write_toml("tx.toml", &cfg);
    let tx = start_tx(&site, &tx_cfg, "tx.log");
    Rig {
        site,
        _broker: broker,
        sub,
        rx,
        tx,
        link,
        rx_cfg,
    }
}

fn point_ids(sub: &Subscriber) -> (usize, HashSet<String>) {
    let msgs = sub.on("uns/");
    let ids = msgs
        .iter()
        .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
        .filter_map(|p| p["id"].as_str().map(str::to_owned))
        .collect();
    (msgs.len(), ids)
}

fn gaps(sub: &Subscriber) -> Vec<Json> {
    sub.on("diode/")
        .iter()
        .filter(|m| m.topic.ends_with("/gaps"))
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

fn gap_records(gaps: &[Json]) -> u64 {
    gaps.iter().filter_map(|g| g["records"].as_u64()).sum()
}

#[test]
fn loss_sweep_within_budget_loses_and_duplicates_nothing() {
    const ROWS: usize = 30_000;
    // The burst lands mid-transfer (about 900 datagrams in all): a burst
    // over the tail would also swallow the heartbeats after it, an outage
    // rather than a burst (`repeat_after` covers those: repeat.rs).
    let sweep = [
        ("clean", 0.0, None),
        ("2% random", 0.02, None),
        ("5% random", 0.05, None),
        ("10% random", 0.10, None),
        ("burst of 200", 0.0, Some((300, 200))),
    ];
    for (i, (name, drop, burst_at)) in sweep.into_iter().enumerate() {
        let imp = Impairment {
            drop,
            burst_at,
            ..Impairment::clean(200 + i as u64)
        };
        let mut r = rig(imp, &DOCUMENTED);
        r.site
            .drop_file("aveva", "sweep.csv", aveva_export(3, ROWS).as_bytes());
        let arrived = r.sub.wait_for(Duration::from_secs(90), |m| {
            m.iter().filter(|x| x.topic.starts_with("uns/")).count() >= ROWS
        });
        std::thread::sleep(Duration::from_secs(3));
        let (msgs, ids) = point_ids(&r.sub);
        let link = &r.link.stats;
        let _ = r.tx.terminate(Duration::from_secs(15));
        let c = stop_rx(&mut r.rx);
        println!(
            "{name}: {} of {ROWS} points, {msgs} messages; relay saw {} dropped {}; rx fec_repaired {} blocks_lost {}",
            ids.len(),
            link.seen.load(std::sync::atomic::Ordering::Relaxed),
            link.dropped.load(std::sync::atomic::Ordering::Relaxed),
            c["fec_repaired"],
            c["blocks_lost"],
        );
        assert!(arrived, "{name}: {} of {ROWS} points arrived", ids.len());
        assert_eq!(ids.len(), ROWS, "{name}: every point");
        assert_eq!(msgs, ROWS, "{name}: no point twice");
        assert_eq!(c["blocks_lost"], 0, "{name}: {c}");
        assert_eq!(c["records_lost"], 0, "{name}: {c}");
        assert!(gaps(&r.sub).is_empty(), "{name}: no gap written");
        if let Some((_, len)) = burst_at {
            let dropped = link.dropped.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(dropped, u64::from(len), "{name}: the burst hit the data");
        }
    }
}

#[test]
fn beyond_the_budget_every_lost_record_is_in_the_ledger() {
    const ROWS: usize = 30_000;
    let imp = Impairment {
        drop: 0.12,
        ..Impairment::clean(7)
    };
    let thin = Fec {
        ratio: 0.05,
        min_repair: 1,
        interleave: 1,
    };
    let mut r = rig(imp, &thin);
    r.site
        .drop_file("aveva", "lossy.csv", aveva_export(4, ROWS).as_bytes());
    // Published and written-down records together account for every row
    // (the heartbeats mark the tail, so even a lost last block counts).
    let accounted = r.sub.wait_for(Duration::from_secs(90), |m| {
        let published = m.iter().filter(|x| x.topic.starts_with("uns/")).count() as u64;
        let written: u64 = m
            .iter()
            .filter(|x| x.topic.ends_with("/gaps"))
            .filter_map(|x| serde_json::from_slice::<Json>(&x.payload).ok())
            .filter_map(|g| g["records"].as_u64())
            .sum();
        published + written >= ROWS as u64
    });
    std::thread::sleep(Duration::from_secs(3));
    let (msgs, ids) = point_ids(&r.sub);
    let g = gaps(&r.sub);
    let lost = gap_records(&g);
    println!(
        "{} published, {lost} in {} gap entries:",
        ids.len(),
        g.len(),
    );
    let seqs: HashSet<u64> = ids
        .iter()
        .filter_map(|id| id.rsplit_once("-b").and_then(|(_, n)| n.parse().ok()))
        .collect();
    for e in &g {
        let (f, n) = (
            e["first_record"].as_u64().unwrap_or(0),
            e["records"].as_u64().unwrap_or(0),
        );
        let overlap = (f..f + n).filter(|s| seqs.contains(s)).count();
        println!(
            "  blocks {}..={} records {f}+{n} complete {} cause {}: {overlap} of them published",
            e["first_block"], e["last_block"], e["sources_complete"], e["cause"]
        );
    }
    assert!(
        accounted,
        "published {} + ledger {lost} < {ROWS}; rx log:\n{}\ntx log:\n{}",
        ids.len(),
        r.rx.log_text(),
        r.tx.log_text()
    );
    assert!(
        lost > 0,
        "the impairment is beyond the budget: something was lost"
    );
    assert_eq!(msgs, ids.len(), "nothing published twice");
    assert_eq!(ids.len() as u64 + lost, ROWS as u64, "count equality");
    for e in &g {
        assert_eq!(e["type"], "gap");
        assert_eq!(e["lane"], "bulk");
        assert_eq!(e["cause"], "link", "{e}");
        assert!(e["records"].is_u64(), "every gap counted: {e}");
        assert!(e["t_first"].is_string() && e["t_last"].is_string(), "{e}");
        let sources: Vec<&str> = e["sources"]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        if e["sources_complete"] == true {
            assert_eq!(sources, ["lossy.csv"], "{e}");
        }
    }
    assert!(
        g.iter().any(|e| e["sources_complete"] == true),
        "single lost blocks are described by the blocks after them"
    );

    let _ = r.tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut r.rx);
    assert_eq!(c["records_lost"].as_u64(), Some(lost), "{c}");
    assert_eq!(c["gap_entries_uncounted"], 0, "{c}");

    // The same ledger, from the file, through the CLI.
    let cfg = r.rx_cfg.display().to_string();
    let out = run_bounded(
        std::process::Command::new(&binaries().rx).args(["gaps", "--config", &cfg, "--json"]),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Json> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("gap line is JSON"))
        .collect();
    assert_eq!(lines.len(), g.len(), "one file line per published gap");
    assert_eq!(gap_records(&lines), lost);
    let table = run_bounded(
        std::process::Command::new(&binaries().rx).args(["gaps", "--config", &cfg]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("{} gaps, {lost} records lost", g.len())),
        "{text}"
    );
}

#[test]
fn numbering_survives_sender_restarts_and_crosses_narrow_counter_wraps() {
    const ROWS: usize = 4_000;
    // The sender's numbering starts just below 2^32 (a u32 wrap, and a
    // re-keying boundary: 2^32 is a multiple of 2^20).
    let first_block: u64 = (1 << 32) - 3;
    let first_record: u64 = (1 << 32) - 1_000;
    let mut r = rig(Impairment::clean(9), &DOCUMENTED);
    let _ = r.tx.terminate(Duration::from_secs(15));
    let state = r.site.path("tx-state.json");
    std::fs::write(
        &state,
        format!(
            r#"{{"epoch":1,"next_block":[0,{first_block}],"next_record":[0,{first_record}],"clean":true}}"#
        ),
    )
    .expect("seed the sender state");
    let tx_cfg = r.site.path("tx.toml");
    r.tx = start_tx(&r.site, &tx_cfg, "tx2.log");
    r.site
        .drop_file("aveva", "one.csv", aveva_export(5, ROWS).as_bytes());
    let one = r.sub.wait_for(Duration::from_mins(1), |m| {
        m.iter().filter(|x| x.topic.starts_with("uns/")).count() >= ROWS
    });
    assert!(
        one,
        "first file across the wrap: {}",
        point_ids(&r.sub).1.len()
    );
    let _ = r.tx.terminate(Duration::from_secs(15));
    let saved: Json =
        serde_json::from_slice(&std::fs::read(&state).expect("state")).expect("state is JSON");
    assert_eq!(saved["clean"], true);
    assert!(saved["next_block"][1].as_u64() > Some(1 << 32), "{saved}");
    assert_eq!(
        saved["next_record"][1].as_u64(),
        Some(first_record + ROWS as u64)
    );

    // A restarted sender continues the numbering, in a newer session the
    // receiver accepts.
    r.tx = start_tx(&r.site, &tx_cfg, "tx3.log");
    r.site
        .drop_file("aveva", "two.csv", aveva_export(6, ROWS).as_bytes());
    let two = r.sub.wait_for(Duration::from_mins(1), |m| {
        m.iter().filter(|x| x.topic.starts_with("uns/")).count() >= 2 * ROWS
    });
    let (msgs, ids) = point_ids(&r.sub);
    let _ = r.tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut r.rx);
    assert!(two, "second file after the restart: {} points", ids.len());
    assert_eq!((msgs, ids.len()), (2 * ROWS, 2 * ROWS), "each point once");
    let mut seqs: Vec<u64> = ids
        .iter()
        .filter_map(|id| id.rsplit_once("-b").and_then(|(_, n)| n.parse().ok()))
        .collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (first_record..first_record + 2 * ROWS as u64).collect();
    assert_eq!(
        seqs, expected,
        "record numbers run on, unbroken, across the restart"
    );
    assert_eq!(c["blocks_lost"], 0, "{c}");
    assert_eq!(c["records_lost"], 0, "{c}");
    assert_eq!(c["drop_old_session"], 0, "{c}");
    assert_eq!(c["drop_auth"], 0, "re-keyed blocks open: {c}");
}
