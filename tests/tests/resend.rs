//! End to end: `weir-tx resend` fills a gap the receiver reported.
//!
//! The daemon sends a spool file while the relay drops one whole block of
//! it, beyond what FEC can repair; the receiver reports the loss and the
//! file lands in `done/`. `weir-tx resend` then sends the file again from
//! `done/`: the points the receiver never got are published (flagged
//! historical), the ones it already published are withheld as exact
//! duplicates and counted. Every point reaches the broker exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value as Json;
use weir_shared::lane::Lane;
use weir_tests::{
    BlockDrop, Broker, Impairment, LossyLink, Site, Subscriber, aveva_export, binaries,
    free_udp_addr, run_bounded, start_rx, start_tx, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x6e; 32];
const ROWS: usize = 400;
const FILE: &str = "line2_0900.csv";

/// Every point published so far, by (tag, ts_ns), with how often and
/// whether it was flagged historical.
fn published(sub: &Subscriber) -> HashMap<(String, i64), (usize, bool)> {
    let mut seen: HashMap<(String, i64), (usize, bool)> = HashMap::new();
    for m in sub.on("uns/") {
        let p: Json = serde_json::from_slice(&m.payload).expect("point payload is JSON");
        let key = (
            p["tag"].as_str().expect("tag").to_owned(),
            p["ts_ns"].as_i64().expect("ts_ns"),
        );
        let e = seen.entry(key).or_insert((0, false));
        e.0 += 1;
        e.1 |= p["hist"] == true;
    }
    seen
}

fn resend(config: &Path, args: &[&str]) -> Output {
    let config = config.display().to_string();
    run_bounded(
        Command::new(&binaries().tx)
            .args(["resend", "--config", &config, "--quiet"])
            .args(args),
        Duration::from_mins(1),
    )
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn resend_publishes_what_was_lost_and_withholds_what_was_not() {
    let site = Site::new();
    let broker = Broker::start();
    let key = site.path("weir.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let id = format!("weir-rx-resend-{}", std::process::id());
    let rx_cfg = site.write_toml(
        "rx.toml",
        &site.rx_config(rx_addr, &key, broker.port(), &id),
    );
    let mut rx = start_rx(&site, &rx_cfg, "rx.log");
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    // Block 1 of the bulk lane is dropped whole: in every session, so the
    // resend goes straight to the receiver.
    let drop = BlockDrop {
        lane: Lane::Bulk,
        first: 1,
        last: 1,
    };
    let relay = LossyLink::start_dropping(rx_addr, Impairment::clean(5), drop);
    let mut tx_cfg = site.tx_config(relay.input, &key);
    // Small blocks: the file spans several, and losing one loses a part.
    tx_cfg["lanes"]["bulk"]["max_batch_bytes"] = 8192.into();
    let daemon_cfg = site.write_toml("tx.toml", &tx_cfg);
    tx_cfg["link"]["destination"] = rx_addr.to_string().into();
    let resend_cfg = site.write_toml("tx-resend.toml", &tx_cfg);
    let mut tx = start_tx(&site, &daemon_cfg, "tx.log");

    site.drop_file("aveva", FILE, aveva_export(9, ROWS).as_bytes());
    let done = site.path(&format!("spool/aveva/done/{FILE}"));
    assert!(
        wait_until(Duration::from_secs(20), || done.is_file()),
        "{FILE} not sent\ntx log:\n{}",
        tx.log_text()
    );
    let reported = sub.wait_for(Duration::from_secs(20), |m| {
        m.iter().any(|x| {
            x.topic.ends_with("/gaps")
                && serde_json::from_slice::<Json>(&x.payload).is_ok_and(|g| {
                    (g["type"] == "gap" || g["type"] == "blocks_lost") && g["lane"] == "bulk"
                })
        })
    });
    assert!(reported, "no gap reported\nrx log:\n{}", rx.log_text());
    let first = published(&sub);
    let dropped = relay
        .stats
        .block_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "first sending: {} of {ROWS} points published, {dropped} datagrams of block 1 dropped",
        first.len()
    );
    assert!(dropped > 0);
    assert!(
        !first.is_empty() && first.len() < ROWS,
        "one block of {ROWS} points lost: {}",
        first.len()
    );
    assert!(first.values().all(|&(n, hist)| n == 1 && !hist));

    // Mistakes are refused before anything is sent.
    let out = resend(&resend_cfg, &["--spool", "nope", "--file", FILE]);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("--spool nope") && err.contains("aveva"),
        "{err}"
    );
    let out = resend(&resend_cfg, &["--spool", "aveva", "--file", "other.csv"]);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("not in done/ of spool `aveva`"), "{err}");

    let out = resend(&resend_cfg, &["--spool", "aveva", "--file", FILE]);
    let (stdout, stderr) = text(&out);
    println!("weir-tx resend: {stdout}");
    assert!(out.status.success(), "resend failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("sent 1 of 1 files") && stdout.contains(&format!("{ROWS} records")),
        "summary: {stdout}"
    );
    assert!(done.is_file(), "the file stays in done/");

    let all = wait_until(Duration::from_secs(20), || published(&sub).len() >= ROWS);
    assert!(
        all,
        "{} of {ROWS} points after the resend\nrx log:\n{}",
        published(&sub).len(),
        rx.log_text()
    );
    // Anything published twice would show up now.
    std::thread::sleep(Duration::from_secs(1));
    let after = published(&sub);
    assert_eq!(after.len(), ROWS);
    for (k, &(n, hist)) in &after {
        assert_eq!(n, 1, "{k:?} published {n} times");
        // Filled in by the resend: flagged historical; the rest as before.
        assert_eq!(hist, !first.contains_key(k), "{k:?}");
    }
    let _ = tx.terminate(Duration::from_secs(15));
    let stats = stop_rx(&mut rx);
    println!("receiver: {stats}");
    assert_eq!(
        stats["dq_duplicates"].as_u64(),
        Some(first.len() as u64),
        "every point published before was withheld as a duplicate"
    );
}
