//! End to end: `weir-tx send` pushes named files across a lossy link to a
//! running `weir-rx`, prints its summary and exits 0 once every block (and
//! the last heartbeats) went out.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use weir_tests::{
    Broker, Impairment, LossyLink, Process, Site, Subscriber, binaries, fixture, free_udp_addr,
    run_bounded, start_rx, stop_rx, write_key,
};

const KEY: [u8; 32] = [0x5a; 32];
const CHUNK: usize = 64 * 1024;

/// A receiver behind a lossy relay, and the sender's config pointing at it.
struct Link {
    broker: Broker,
    rx: Process,
    relay: LossyLink,
    tx_config: PathBuf,
}

fn start_link(site: &Site, imp: Impairment) -> Link {
    let broker = Broker::start();
    let key = site.path("weir.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let id = format!("weir-rx-send-{}", std::process::id());
    let rx_cfg = site.write_toml(
        "rx.toml",
        &site.rx_config(rx_addr, &key, broker.port(), &id),
    );
    let rx = start_rx(site, &rx_cfg, "rx.log");
    let relay = LossyLink::start(rx_addr, imp);
    let tx_config = site.write_toml("tx.toml", &site.send_config(relay.input, &key));
    Link {
        broker,
        rx,
        relay,
        tx_config,
    }
}

/// Run `weir-tx send` to its end (bounded), stdout and stderr captured.
fn send(args: &[&str]) -> Output {
    run_bounded(
        Command::new(&binaries().tx).arg("send").args(args),
        Duration::from_mins(2),
    )
}

/// Deterministic bytes that do not compress to nothing.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn send_pushes_opaque_files_across_a_lossy_link() {
    let site = Site::new();
    let imp = Impairment {
        seed: 7,
        drop: 0.02,
        duplicate: 0.01,
        reorder: 0.01,
        burst: 0.0,
        burst_len: 0,
        burst_at: None,
        corrupt: 0.0,
    };
    let mut link = start_link(&site, imp);
    let sub = Subscriber::start(link.broker.port(), &["diode/#"]);
    // 2 MB + a bit (31 chunks), exactly one chunk, an empty file (one empty
    // chunk), a small text file.
    let files: Vec<(PathBuf, Vec<u8>)> = vec![
        (
            site.path("out/historian-backup.bin"),
            bytes(30 * CHUNK + 999, 1),
        ),
        (site.path("out/one-chunk.bin"), bytes(CHUNK, 2)),
        (site.path("out/empty.bin"), Vec::new()),
        (site.path("out/notes.txt"), b"shift report\n".repeat(100)),
    ];
    std::fs::create_dir_all(site.path("out")).expect("mkdir");
    for (p, data) in &files {
        std::fs::write(p, data).expect("write file");
    }
    let expected_chunks: usize = files
        .iter()
        .map(|(_, d)| d.len().div_ceil(CHUNK).max(1))
        .sum();
    assert_eq!(expected_chunks, 31 + 1 + 1 + 1);

    let t0 = Instant::now();
    let mut args = vec!["--config".to_owned(), link.tx_config.display().to_string()];
    args.extend(files.iter().map(|(p, _)| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = send(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("weir-tx send took {:?}: {stdout}", t0.elapsed());
    assert!(
        out.status.success(),
        "weir-tx send failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("sent 4 of 4 files (0 failed)"),
        "summary: {stdout}"
    );
    assert!(
        stdout.contains(&format!("{expected_chunks} records")),
        "summary counts the chunks: {stdout}"
    );
    for word in ["blocks", "datagrams", "bytes in", "Mbit/s"] {
        assert!(stdout.contains(word), "summary names {word}: {stdout}");
    }
    // Files are left where they are.
    for (p, data) in &files {
        assert_eq!(&std::fs::read(p).expect("file still there"), data);
    }

    // The last heartbeats went out before weir-tx exited; wait until the
    // receiver's status (every 2 s) has counted the tail, then stop it and
    // read its final counters.
    let counted = sub.wait_for(Duration::from_secs(30), |m| {
        m.iter().any(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).is_ok_and(|s| {
                s["counters"]["file_chunks"].as_u64() >= Some(expected_chunks as u64)
            })
        })
    });
    println!("receiver status counted every chunk: {counted}");
    let dropped = link
        .relay
        .stats
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    let stats = stop_rx(&mut link.rx);
    println!("relay dropped {dropped} datagrams; receiver counters: {stats}");
    assert!(dropped > 0, "the relay really dropped datagrams");
    assert_eq!(
        stats["file_chunks"].as_u64(),
        Some(expected_chunks as u64),
        "every chunk arrived once"
    );
    assert_eq!(stats["blocks_lost"], 0, "FEC recovered every block");
}

#[test]
fn send_with_a_format_parses_historian_files() {
    let site = Site::new();
    let mut link = start_link(&site, Impairment::clean(3));
    let sub = Subscriber::start(link.broker.port(), &["uns/#"]);
    let csv = site.path("aveva_history.csv");
    std::fs::write(&csv, fixture("aveva_history.csv")).expect("fixture");
    let out = send(&[
        "--config",
        &link.tx_config.display().to_string(),
        "--format",
        "aveva-csv",
        "--tz",
        "America/Chicago",
        &csv.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir-tx send failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sent 1 of 1 files (0 failed): 8 records"),
        "{stdout}"
    );
    assert!(csv.exists(), "the file is left where it was");
    let arrived = sub.wait_for(Duration::from_secs(30), |m| m.len() >= 8);
    assert!(
        arrived,
        "the 8 points were published; rx log:\n{}",
        link.rx.log_text()
    );
    let stats = stop_rx(&mut link.rx);
    assert_eq!(stats["records"], 8);
    assert_eq!(stats["file_chunks"], 0);
    assert_eq!(stats["blocks_lost"], 0);

    // A format that writes local time refuses to guess the zone, before
    // anything is sent.
    let out = send(&[
        "--config",
        &link.tx_config.display().to_string(),
        "--format",
        "aveva-csv",
        &csv.display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tz"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
