//! Faults around the real binaries (issue "No silent loss"): programs
//! started in the "wrong" order, killed with SIGKILL mid-stream, a broker
//! restarted, the receiver's disk full, and wall clocks jumping, all over
//! loopback with a real Mosquitto.
//!
//! Every test checks each point a subscriber got against the generator of
//! the export it came from ([`aveva_export_row`]): the right tag, time and
//! value, and how often it was published.
//!
//! Needs Mosquitto (the broker restart), root for a tmpfs (the full disk;
//! skipped with a reason without), and libfaketime (the clock jumps,
//! `apt-get install faketime`; skipped with a reason without).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::Value as Json;
use weir_tests::{
    Broker, FakeClock, Impairment, LossyLink, Process, Site, Subscriber, Tmpfs, aveva_export,
    aveva_export_row, binaries, free_udp_addr, latest_status, mosquitto_path, point_payloads,
    run_bounded, start_rx, start_rx_with_env, start_tx, start_tx_with_env, stop_rx, wait_until,
    write_key,
};

const KEY: [u8; 32] = [0x6b; 32];
const GAPS: &str = "diode/v1/plant1/weir01/gaps";
const AUDIT: &str = "diode/v1/plant1/weir01/audit";
/// A wire rate at which a few thousand points take seconds, so that
/// faults land mid-stream (bulk blocks of 8 KiB: many of them).
const SLOW_MBPS: f64 = 0.25;

/// A broker with a subscriber, and configs for a receiver and a sender
/// (neither started).
struct Rig {
    broker: Broker,
    sub: Subscriber,
    key: PathBuf,
    rx_addr: SocketAddr,
    rx_cfg: PathBuf,
    tx_cfg: PathBuf,
}

fn rig(site: &Site, rate_mbps: f64, rx_tweak: impl FnOnce(&mut toml::Table)) -> Rig {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let key = site.path("weir.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let id = format!("weir-rx-faults-{}", std::process::id());
    let mut rx = site.rx_config(rx_addr, &key, broker.port(), &id);
    rx_tweak(&mut rx);
    let rx_cfg = site.write_toml("rx.toml", &rx);
    let tx_cfg = tx_config(site, "tx.toml", rx_addr, &key, rate_mbps);
    Rig {
        broker,
        sub,
        key,
        rx_addr,
        rx_cfg,
        tx_cfg,
    }
}

/// A sender config sending to `destination` at `rate_mbps`, in small
/// bulk blocks (8 KiB: a few thousand points make dozens of blocks).
fn tx_config(
    site: &Site,
    name: &str,
    destination: SocketAddr,
    key: &Path,
    rate_mbps: f64,
) -> PathBuf {
    let mut tx = site.tx_config(destination, key);
    tx["link"]["rate_mbps"] = toml::Value::Float(rate_mbps);
    tx["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(8 * 1024);
    tx["lanes"]["bulk"]["max_age"] = toml::Value::String("50ms".into());
    site.write_toml(name, &tx)
}

/// One published copy of a point.
struct Copy {
    id: String,
    payload: Json,
}

/// What a subscriber got, by export row `(day, row)`.
struct Tally {
    rows: HashMap<(i64, i64), Vec<Copy>>,
    /// Points that are no row of any export (must stay empty).
    bogus: Vec<String>,
}

impl Tally {
    fn of(sub: &Subscriber) -> Self {
        let mut rows: HashMap<(i64, i64), Vec<Copy>> = HashMap::new();
        let mut bogus = Vec::new();
        for p in point_payloads(sub) {
            match aveva_export_row(&p) {
                Ok(row) => rows.entry(row).or_default().push(Copy {
                    id: p["id"].as_str().unwrap_or_default().to_owned(),
                    payload: p,
                }),
                Err(e) => bogus.push(format!("{e}: {p}")),
            }
        }
        Self { rows, bogus }
    }

    fn distinct(&self) -> usize {
        self.rows.len()
    }

    fn copies(&self) -> usize {
        self.rows.values().map(Vec::len).sum()
    }

    /// Every row of `day`'s export of `rows` rows is there.
    fn has_all(&self, day: i64, rows: usize) -> bool {
        let rows = i64::try_from(rows).expect("row count");
        (0..rows).all(|r| self.rows.contains_key(&(day, r)))
    }

    /// Nothing bogus, and every row published exactly once under one id.
    fn assert_exactly_once(&self, expected: usize) {
        assert!(
            self.bogus.is_empty(),
            "bogus points: {:?}",
            &self.bogus[..1]
        );
        let twice: Vec<_> = self.rows.iter().filter(|(_, c)| c.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "{} rows published more than once, e.g. {:?}",
            twice.len(),
            twice
                .first()
                .map(|(r, c)| (r, c.iter().map(|c| &c.id).collect::<Vec<_>>()))
        );
        let ids: HashSet<&str> = self
            .rows
            .values()
            .flatten()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids.len(), self.copies(), "one record id per point");
        assert_eq!(self.distinct(), expected, "every point exactly once");
    }
}

fn distinct_rows(sub: &Subscriber) -> usize {
    Tally::of(sub).distinct()
}

fn wait_distinct(sub: &Subscriber, n: usize, timeout: Duration) -> bool {
    wait_until(timeout, || distinct_rows(sub) >= n)
}

/// Wait until no new point arrived for `quiet` (at most `timeout`).
fn wait_quiet(sub: &Subscriber, quiet: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = (sub.on("uns/").len(), Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let n = sub.on("uns/").len();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() >= quiet {
            return;
        }
    }
}

fn done(site: &Site, name: &str) -> bool {
    site.path(&format!("spool/aveva/done/{name}")).exists()
}

fn counter(c: &Json, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {c}"))
}

/// Counters that only junk or a bug can move: no test here sends junk.
fn assert_nothing_forged(c: &Json) {
    for name in [
        "drop_crc",
        "drop_malformed",
        "drop_geometry",
        "drop_inconsistent",
        "drop_unknown_key",
        "drop_auth",
        "drop_frame",
    ] {
        assert_eq!(counter(c, name), 0, "{name}: {c}");
    }
}

/// Records the gap events account for (`records` of each distinct
/// event: events are published at least once).
fn gap_records(sub: &Subscriber) -> u64 {
    let distinct: HashSet<String> = gap_events(sub)
        .into_iter()
        .filter(|g| g["records"].is_u64())
        .map(|g| {
            let key = [
                "session",
                "lane",
                "first_block",
                "last_block",
                "first_record",
                "records",
            ];
            key.iter()
                .map(|k| g[*k].to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    distinct
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.parse::<u64>().ok())
        .sum()
}

fn gap_events(sub: &Subscriber) -> Vec<Json> {
    sub.on(GAPS)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("gap payload is JSON"))
        .collect()
}

// ---------------------------------------------------------------------
// Start order
// ---------------------------------------------------------------------

#[test]
fn receiver_started_mid_stream_publishes_only_valid_points_once() {
    let site = Site::new();
    let rig = rig(&site, SLOW_MBPS, |_| {});
    let rows = 2000;
    for day in 1..=3 {
        let name = format!("day{day}.csv");
        site.drop_file("aveva", &name, aveva_export(day, rows).as_bytes());
    }
    // Through a relay, to see the sender's datagrams go out while nothing
    // listens yet.
    let link = LossyLink::start(rig.rx_addr, Impairment::clean(3));
    let tx_cfg = tx_config(&site, "tx-relay.toml", link.input, &rig.key, SLOW_MBPS);
    let mut tx = start_tx(&site, &tx_cfg, "tx.log");
    let seen = || link.stats.seen.load(Ordering::Relaxed);
    // About a thousand points: half of the first file.
    assert!(
        wait_until(Duration::from_secs(20), || seen() >= 40),
        "the sender sends; log:\n{}",
        tx.log_text()
    );
    let t0 = Instant::now();
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx.log");
    println!("receiver started after {} datagrams were sent", seen());
    let sent = wait_until(Duration::from_mins(1), || {
        (1..=3).all(|d| done(&site, &format!("day{d}.csv")))
    });
    assert!(sent, "sender finished its backlog; log:\n{}", tx.log_text());
    println!("{:>5.1?}: backlog sent", t0.elapsed());
    wait_quiet(&rig.sub, Duration::from_secs(2), Duration::from_secs(20));
    println!("{:>5.1?}: quiet", t0.elapsed());
    assert!(rx.running(), "rx still runs:\n{}", rx.log_text());
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    println!("{:>5.1?}: stopped", t0.elapsed());
    let t = Tally::of(&rig.sub);
    println!(
        "{} of {} points published after joining mid-stream; gaps {:?}; counters {c}",
        t.distinct(),
        3 * rows,
        gap_events(&rig.sub)
    );
    // What the receiver says it missed (gap events' `records`) and what it
    // published: printed, as gap accounting is still being built.
    println!(
        "accounting: {} published + {} in gap events, of {} sent",
        t.distinct(),
        gap_records(&rig.sub),
        3 * rows
    );
    t.assert_exactly_once(t.distinct());
    assert!(
        t.distinct() > 0,
        "the receiver published the rest of the stream"
    );
    let complete = (1..=3).filter(|&d| t.has_all(d, rows)).count();
    assert!(
        t.distinct() < 3 * rows && complete == 2,
        "the receiver joined during the first file: it missed its start, and got the \
         two files sent after it listened ({complete} complete)"
    );
    assert_nothing_forged(&c);
    assert_eq!(counter(&c, "dq_duplicates"), 0, "{c}");
}

#[test]
fn sender_started_before_its_receiver_delivers_a_later_file_exactly_once() {
    let site = Site::new();
    let rig = rig(&site, 50.0, |_| {});
    let mut tx = start_tx(&site, &rig.tx_cfg, "tx.log");
    // Heartbeats into a closed port: ICMP port unreachable comes back.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        tx.running(),
        "sender survives an absent receiver:\n{}",
        tx.log_text()
    );
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx.log");
    let up = wait_until(Duration::from_secs(10), || {
        latest_status(&rig.sub).is_some_and(|s| s["link_up"] == true)
    });
    assert!(up, "the receiver saw the sender's heartbeats");
    let rows = 3000;
    site.drop_file("aveva", "day4.csv", aveva_export(4, rows).as_bytes());
    assert!(
        wait_distinct(&rig.sub, rows, Duration::from_secs(30)),
        "rx log:\n{}",
        rx.log_text()
    );
    wait_quiet(&rig.sub, Duration::from_secs(1), Duration::from_secs(10));
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    Tally::of(&rig.sub).assert_exactly_once(rows);
    assert!(gap_events(&rig.sub).is_empty(), "no gap reported");
    assert_eq!(counter(&c, "blocks_lost"), 0, "{c}");
    assert_nothing_forged(&c);
}

// ---------------------------------------------------------------------
// SIGKILL
// ---------------------------------------------------------------------

#[test]
fn sender_killed_mid_file_three_times_delivers_every_point() {
    let site = Site::new();
    let rig = rig(&site, SLOW_MBPS, |_| {});
    let rows = 3000;
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx.log");
    site.drop_file("aveva", "day5.csv", aveva_export(5, rows).as_bytes());
    let mut tx = start_tx(&site, &rig.tx_cfg, "tx0.log");
    for round in 1..=3 {
        // Each session gets further into the file than the one before.
        assert!(
            wait_distinct(&rig.sub, rows * round * 3 / 20, Duration::from_secs(30)),
            "round {round}: {} points; tx log:\n{}",
            distinct_rows(&rig.sub),
            tx.log_text()
        );
        tx.kill();
        assert!(
            site.path("spool/aveva/working/day5.csv").exists(),
            "killed mid-file: the file waits in working/"
        );
        tx = start_tx(&site, &rig.tx_cfg, &format!("tx{round}.log"));
    }
    let sent = wait_until(Duration::from_secs(40), || done(&site, "day5.csv"));
    assert!(sent, "the file reached done/; tx log:\n{}", tx.log_text());
    wait_quiet(&rig.sub, Duration::from_secs(2), Duration::from_secs(20));
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    let t = Tally::of(&rig.sub);
    println!(
        "{} points, {} copies published after 3 sender kills; counters {c}",
        t.distinct(),
        t.copies()
    );
    // A sender restarted after a crash sends its file again from the
    // start (README, "Spool directories"), under the new session's record
    // ids. The receiver's data-quality stage recognises an exact repeat of
    // a point it published lately (tag, time, value, status; `dq.
    // duplicate_memory` points) and withholds it, counted: so every point
    // is published exactly once.
    t.assert_exactly_once(rows);
    assert!(
        counter(&c, "dq_duplicates") >= 1,
        "the points sent again were withheld and counted: {c}"
    );
    assert_eq!(
        counter(&c, "records"),
        rows as u64 + counter(&c, "dq_duplicates"),
        "every record decoded was published or withheld as a duplicate: {c}"
    );
    assert_nothing_forged(&c);
}

#[test]
fn receiver_killed_mid_stream_three_times_recovers_without_duplicates() {
    let site = Site::new();
    let rig = rig(&site, SLOW_MBPS, |_| {});
    let rows = 3000;
    let t0 = Instant::now();
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx0.log");
    site.drop_file("aveva", "day6.csv", aveva_export(6, rows).as_bytes());
    let mut tx = start_tx(&site, &rig.tx_cfg, "tx.log");
    for round in 1..=3 {
        assert!(
            wait_distinct(&rig.sub, rows * round / 5, Duration::from_secs(30)),
            "round {round}: {} points; rx log:\n{}",
            distinct_rows(&rig.sub),
            rx.log_text()
        );
        rx.kill();
        // The same config, so the same outbox: it publishes what the
        // killed receiver committed.
        rx = start_rx(&site, &rig.rx_cfg, &format!("rx{round}.log"));
        println!(
            "{:>5.1?}: receiver killed and restarted ({round})",
            t0.elapsed()
        );
    }
    let sent = wait_until(Duration::from_secs(40), || done(&site, "day6.csv"));
    assert!(sent, "the file reached done/; tx log:\n{}", tx.log_text());
    println!("{:>5.1?}: file sent", t0.elapsed());
    wait_quiet(&rig.sub, Duration::from_secs(3), Duration::from_secs(30));
    println!("{:>5.1?}: quiet", t0.elapsed());
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    println!("{:>5.1?}: stopped", t0.elapsed());
    let t = Tally::of(&rig.sub);
    let gaps = gap_events(&rig.sub);
    println!(
        "{} of {rows} points ({} copies) after 3 receiver kills; {} gap events {gaps:?}; counters {c}",
        t.distinct(),
        t.copies(),
        gaps.len()
    );
    println!(
        "accounting: {} published + {} in gap events, of {rows} sent",
        t.distinct(),
        gap_records(&rig.sub)
    );
    assert!(t.bogus.is_empty(), "bogus points: {:?}", t.bogus.first());
    // Each receiver publishes an outbox entry at most once per start or
    // rewind; a killed receiver's own rewinds are not known here (at most
    // one more per start is allowed for them).
    assert_republished_identically(&t, 1 + 2 * 3 + counter(&c, "rewinds"));
    // Nothing lost silently across the crashes: every record sent was
    // published or is counted in a gap entry, and none is both (a block
    // the killed receiver committed is neither rebuilt nor reported lost
    // by the next one).
    assert_eq!(
        t.distinct() as u64 + gap_records(&rig.sub),
        rows as u64,
        "published + lost in gap entries == sent; gaps {gaps:?}"
    );
    assert!(t.distinct() <= rows);
    assert!(t.distinct() > rows / 2, "most points arrived");
    assert_nothing_forged(&c);
}

/// Delivery contract (README, "What a receiver crash loses"): what the
/// broker acknowledged within `retain_acked` is published again after a
/// restart, under the same record id. So a point appears under one id
/// only, every copy identical, at most once per restart or rewind more.
fn assert_republished_identically(t: &Tally, restarts_and_rewinds: u64) {
    let mut extra = 0;
    for (row, copies) in &t.rows {
        let first = &copies[0];
        for c in &copies[1..] {
            extra += 1;
            assert_eq!(c.id, first.id, "{row:?} published under two record ids");
            assert!(
                c.payload == first.payload,
                "{row:?} published again, changed:\n{}\n{}",
                first.payload,
                c.payload
            );
        }
        assert!(
            copies.len() as u64 <= 1 + restarts_and_rewinds,
            "{row:?} published {} times",
            copies.len()
        );
    }
    let most = t.rows.values().map(Vec::len).max().unwrap_or(0);
    println!("{extra} republished copies (same id, same payload), at most {most} of one point");
}

// ---------------------------------------------------------------------
// Broker restart
// ---------------------------------------------------------------------

#[test]
fn broker_restarted_mid_stream_every_point_is_delivered() {
    assert!(
        mosquitto_path().is_some(),
        "this test needs mosquitto (apt-get install mosquitto)"
    );
    let site = Site::new();
    let mut rig = rig(&site, 20.0, |_| {});
    let rows = 20_000;
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx.log");
    let mut tx = start_tx(&site, &rig.tx_cfg, "tx.log");
    site.drop_file("aveva", "day7.csv", aveva_export(7, rows).as_bytes());
    assert!(
        wait_distinct(&rig.sub, rows / 4, Duration::from_secs(30)),
        "first points; rx log:\n{}",
        rx.log_text()
    );
    // Both programs paused while the broker is away and the subscriber
    // comes back (as tests/tests/outbox.rs does): a subscriber that is not
    // subscribed yet cannot receive, which is MQTT, not the receiver.
    tx.signal("STOP");
    rx.signal("STOP");
    rig.broker.stop();
    rig.broker.resume();
    assert!(
        rig.sub.wait_subscribed(2, Duration::from_secs(10)),
        "subscriber came back"
    );
    rx.signal("CONT");
    tx.signal("CONT");
    let complete = wait_distinct(&rig.sub, rows, Duration::from_secs(40));
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    let t = Tally::of(&rig.sub);
    assert!(
        complete,
        "{} of {rows} points after a broker restart; counters {c}",
        t.distinct()
    );
    assert!(t.bogus.is_empty(), "bogus points: {:?}", t.bogus.first());
    let ids: HashSet<&str> = t.rows.values().flatten().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), rows, "one record id per point");
    assert!(counter(&c, "rewinds") >= 1, "the outbox rewound: {c}");
    assert_eq!(counter(&c, "outbox_refused"), 0, "{c}");
    assert_eq!(counter(&c, "blocks_lost"), 0, "{c}");
}

// ---------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------

/// Run `weir-tx send` with `args` to the end.
fn push(config: &Path, args: &[&str]) -> String {
    let out = run_bounded(
        Command::new(&binaries().tx)
            .args(["send", "--quiet", "--config"])
            .arg(config)
            .args(args),
        Duration::from_mins(1),
    );
    assert!(
        out.status.success(),
        "weir-tx send failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A receiver whose outbox and file output share a tmpfs of 8 MiB, most
/// of it taken by a ballast file, and whose broker is away: the next
/// megabytes it receives cannot be stored.
struct FullDisk {
    rig: Rig,
    rx: Process,
    disk: Tmpfs,
    ballast: PathBuf,
    send_cfg: PathBuf,
}

/// Fill the receiver's disk (a small tmpfs: the tests run as root).
fn fill_the_disk(site: &Site) -> FullDisk {
    let disk = Tmpfs::mount(&site.path("small"), "8m")
        .unwrap_or_else(|why| panic!("the disk-full tests mount a tmpfs (run as root): {why}"));
    let ballast = disk.path.join("ballast");
    std::fs::write(&ballast, vec![0x55u8; 5 << 20]).expect("ballast");
    let (out, outbox) = (disk.path.join("files"), disk.path.join("outbox.redb"));
    let mut rig = rig(site, 200.0, |cfg| {
        cfg["outbox"]["path"] = toml::Value::String(outbox.display().to_string());
        let mut files = toml::Table::new();
        files.insert("output_dir".into(), out.display().to_string().into());
        cfg.insert("files".into(), toml::Value::Table(files));
    });
    let send_cfg = site.write_toml("send.toml", &site.send_config(rig.rx_addr, &rig.key));
    let rx = start_rx(site, &rig.rx_cfg, "rx.log");
    // Nothing drains the outbox while the broker is away.
    rig.broker.stop();
    let big = site.path("big.bin");
    let mut data = vec![0u8; 6 << 20];
    StdRng::seed_from_u64(5).fill_bytes(&mut data);
    std::fs::write(&big, &data).expect("big file");
    push(&send_cfg, &[&big.display().to_string()]);
    let full = wait_until(Duration::from_secs(10), || {
        rx.log_text().contains("No space left on device")
    });
    assert!(full, "the disk filled up; rx log:\n{}", rx.log_text());
    std::thread::sleep(Duration::from_secs(1));
    println!("free on the receiver's disk: {:?} bytes", disk.free_bytes());
    FullDisk {
        rig,
        rx,
        disk,
        ballast,
        send_cfg,
    }
}

impl FullDisk {
    /// Bring the broker back (the subscriber first: see the broker test).
    fn broker_back(&mut self) {
        self.rx.signal("STOP");
        self.rig.broker.resume();
        assert!(self.rig.sub.wait_subscribed(2, Duration::from_secs(10)));
        self.rx.signal("CONT");
    }

    /// The receiver's final counters, after checking that it still runs
    /// and that every block the disk refused was counted and reported.
    fn stop_and_check(mut self) -> Json {
        assert!(self.rx.running(), "rx survived:\n{}", self.rx.log_text());
        let c = stop_rx(&mut self.rx);
        let refused = counter(&c, "outbox_refused");
        let reported: HashSet<String> = gap_events(&self.rig.sub)
            .iter()
            .filter(|g| g["type"] == "gap" && g["cause"] == "outbox_error")
            .map(|g| format!("{}/{}/{}", g["session"], g["lane"], g["first_block"]))
            .collect();
        println!(
            "{refused} blocks refused by the full disk, {} reported; counters {c}",
            reported.len()
        );
        assert!(refused > 0, "the full disk was counted: {c}");
        assert_eq!(
            reported.len() as u64,
            refused,
            "one outbox_error gap event per refused block"
        );
        drop(self.disk);
        c
    }
}

#[test]
fn receiver_disk_full_is_counted_and_reported_without_a_crash() {
    let site = Site::new();
    let mut full = fill_the_disk(&site);
    assert!(
        full.rx.running(),
        "rx survived a full disk:\n{}",
        full.rx.log_text()
    );
    full.broker_back();
    let reported = full.rig.sub.wait_for(Duration::from_secs(20), |m| {
        m.iter().any(|r| r.topic == GAPS)
    });
    assert!(reported, "the loss was reported on the gaps topic");
    std::thread::sleep(Duration::from_secs(1));
    full.stop_and_check();
}

/// After the disk filled up once, redb fails every later transaction
/// ("Previous I/O error occurred. Please close and re-open the
/// database."), and the outbox never reopens it: once space is free
/// again, every new block is still refused, until weir-rx restarts.
#[test]
fn receiver_disk_full_recovers_once_space_is_free() {
    let site = Site::new();
    let mut full = fill_the_disk(&site);
    std::fs::remove_file(&full.ballast).expect("free the ballast");
    full.broker_back();
    let csv = site.write("day8.csv", &aveva_export(8, 3000));
    let csv = csv.display().to_string();
    let tz = ["--format", "aveva-csv", "--tz", "America/Chicago"];
    push(&full.send_cfg, &[&tz[..], &[csv.as_str()]].concat());
    let recovered = wait_distinct(&full.rig.sub, 3000, Duration::from_secs(30));
    assert!(
        recovered,
        "{} of 3000 points sent after space was freed arrived; rx log:\n{}",
        distinct_rows(&full.rig.sub),
        full.rx.log_text()
    );
    // The broker came back with the receiver stopped, so the receiver may
    // reconnect and rewind once more: what it published within
    // `retain_acked` may come again, under the same ids, unchanged.
    let t = Tally::of(&full.rig.sub);
    let c = full.stop_and_check();
    assert!(t.has_all(8, 3000), "every point sent after space was freed");
    assert_republished_identically(&t, counter(&c, "rewinds"));
}

// ---------------------------------------------------------------------
// Clock jumps
// ---------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Tx,
    Rx,
}

fn skew_ms(sub: &Subscriber) -> Option<i64> {
    latest_status(sub).and_then(|s| s["sender"]["clock_skew_ms"].as_i64())
}

/// One program's wall clock jumps an hour forward, then an hour back
/// (from real time), mid-stream. Point times come from the data, so
/// every point arrives once, unchanged; the status topic's clock skew
/// follows the jump.
fn clock_jumps(side: Side) {
    let site = Site::new();
    let clock = FakeClock::new(site.path("faketime.offset"))
        .unwrap_or_else(|why| panic!("clock jumps of {side:?} need libfaketime: {why}"));
    let rig = rig(&site, SLOW_MBPS, |_| {});
    let (rx_env, tx_env) = match side {
        Side::Tx => (Vec::new(), clock.env()),
        Side::Rx => (clock.env(), Vec::new()),
    };
    let mut rx = start_rx_with_env(&site, &rig.rx_cfg, "rx.log", &rx_env);
    let mut tx = start_tx_with_env(&site, &rig.tx_cfg, "tx.log", &tx_env);
    let rows = 6000;
    site.drop_file("aveva", "day9.csv", aveva_export(9, rows).as_bytes());
    let near = |want: i64| move |s: Option<i64>| s.is_some_and(|s| (s - want).abs() < 10_000);
    assert!(
        wait_until(Duration::from_secs(10), || near(0)(skew_ms(&rig.sub))),
        "no skew before the jump: {:?}",
        skew_ms(&rig.sub)
    );
    for (step, offset) in [(1, 3600i64), (2, -3600)] {
        assert!(
            wait_distinct(&rig.sub, rows * step / 4, Duration::from_secs(30)),
            "points before jump {step}; tx log:\n{}",
            tx.log_text()
        );
        clock.set_offset_secs(offset);
        let want = if side == Side::Tx { offset } else { -offset } * 1000;
        let seen = wait_until(Duration::from_secs(10), || near(want)(skew_ms(&rig.sub)));
        println!(
            "{side:?} clock {offset:+} s: status clock_skew_ms {:?}",
            skew_ms(&rig.sub)
        );
        assert!(seen, "the status shows a skew near {want} ms");
    }
    let complete = wait_distinct(&rig.sub, rows, Duration::from_secs(40));
    wait_quiet(&rig.sub, Duration::from_secs(1), Duration::from_secs(10));
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    assert!(
        complete,
        "{} of {rows} points; counters {c}",
        distinct_rows(&rig.sub)
    );
    Tally::of(&rig.sub).assert_exactly_once(rows);
    assert_eq!(counter(&c, "blocks_lost"), 0, "{c}");
    assert_eq!(counter(&c, "dq_duplicates"), 0, "{c}");
    assert_nothing_forged(&c);
}

#[test]
fn sender_wall_clock_jumps_change_no_point() {
    clock_jumps(Side::Tx);
}

#[test]
fn receiver_wall_clock_jumps_change_no_point() {
    clock_jumps(Side::Rx);
}

// ---------------------------------------------------------------------
// Exact accounting at the edges: restarts and a full disk
// ---------------------------------------------------------------------

/// The record number of a published point, from its id
/// (`{session}-b{seq}`).
fn record_seq(id: &str) -> u64 {
    id.rsplit_once("-b")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("a bulk record id: {id}"))
}

/// The distinct gap entries a subscriber got (each is published at
/// least once).
fn distinct_gaps(sub: &Subscriber) -> Vec<Json> {
    let mut seen = HashSet::new();
    gap_events(sub)
        .into_iter()
        .filter(|g| g["type"] == "gap")
        .filter(|g| {
            seen.insert(format!(
                "{}/{}/{}",
                g["session"], g["lane"], g["first_block"]
            ))
        })
        .collect()
}

/// Every row of `day`'s export of `rows` rows was published or is
/// counted in a gap entry, never both: the gap entries name exactly the
/// record numbers of the rows that were not published, every entry has a
/// count, and names the export as its source (or says its sources are
/// incomplete).
fn assert_ledger_is_exact(t: &Tally, gaps: &[Json], day: i64, rows: usize, file: &str) {
    // The export's rows are numbered one after the other on the bulk
    // lane: row r is record `offset + r`.
    let offsets: HashSet<i64> = t
        .rows
        .iter()
        .filter(|((d, _), _)| *d == day)
        .map(|((_, r), c)| i64::try_from(record_seq(&c[0].id)).expect("seq") - r)
        .collect();
    assert!(offsets.len() <= 1, "rows numbered in order: {offsets:?}");
    let offset = match offsets.into_iter().next() {
        Some(o) => o,
        // Nothing of it was published: its records start where its
        // lowest gap entry does.
        None => gaps
            .iter()
            .filter_map(|g| g["first_record"].as_i64())
            .min()
            .expect("a gap entry when nothing was published"),
    };
    let mut in_gaps: HashSet<i64> = HashSet::new();
    for g in gaps {
        let (Some(first), Some(n)) = (g["first_record"].as_i64(), g["records"].as_i64()) else {
            panic!("a gap entry without an exact count: {g}");
        };
        for seq in first..first + n {
            assert!(in_gaps.insert(seq), "record {seq} in two gap entries: {g}");
        }
        let sources: Vec<&str> = g["sources"]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        assert!(
            sources.iter().all(|s| *s == file),
            "only the export is named: {g}"
        );
        assert!(
            sources.contains(&file) || g["sources_complete"] == false,
            "the export is named, or the sources are said to be incomplete: {g}"
        );
    }
    let rows = i64::try_from(rows).expect("rows");
    for r in 0..rows {
        let published = t.rows.contains_key(&(day, r));
        let lost = in_gaps.contains(&(offset + r));
        assert!(
            published != lost,
            "row {r} (record {}): published {published}, in a gap entry {lost}",
            offset + r
        );
    }
    assert_eq!(
        i64::try_from(in_gaps.len()).expect("n"),
        rows - i64::try_from(t.rows.keys().filter(|(d, _)| *d == day).count()).expect("n"),
        "the gap entries count no record that was published or not sent"
    );
}

/// Wait (bounded) until each of `total` records is published or in a gap
/// entry (the last entries come a gap_timeout, 5 s, after the sender's
/// heartbeats named the blocks), stop the receiver, and say whether they
/// all were, its counters, what arrived and the gap entries.
fn settle(sub: &Subscriber, rx: &mut Process, total: usize) -> (bool, Json, Tally, Vec<Json>) {
    let settled = wait_until(Duration::from_secs(40), || {
        distinct_rows(sub) as u64 + gap_records(sub) >= total as u64
    });
    let c = stop_rx(rx);
    let t = Tally::of(sub);
    let gaps = distinct_gaps(sub);
    println!(
        "{} of {total} published, {} in {} gap entries {gaps:?}; counters {c}",
        t.distinct(),
        gap_records(sub),
        gaps.len()
    );
    (settled, c, t, gaps)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

/// Stop the receiver mid-stream (`kill -9` or SIGTERM), leave it down for
/// 3 s while the sender goes on, start it again; three times. What was
/// sent while it was down is counted exactly on restart.
fn receiver_down_mid_stream(how: Stop) {
    let site = Site::new();
    let rig = rig(&site, SLOW_MBPS, |_| {});
    // Enough for the stream to outlast three stops of 3 s at SLOW_MBPS.
    let rows = 20_000;
    let t0 = Instant::now();
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx0.log");
    site.drop_file("aveva", "day9.csv", aveva_export(9, rows).as_bytes());
    let mut tx = start_tx(&site, &rig.tx_cfg, "tx.log");
    for round in 1..=3 {
        // Each (re)started receiver delivers some before it is stopped.
        let before = distinct_rows(&rig.sub);
        assert!(
            wait_distinct(&rig.sub, before + 300, Duration::from_secs(30)),
            "round {round}: {} points; rx log:\n{}",
            distinct_rows(&rig.sub),
            rx.log_text()
        );
        let stopped = Instant::now();
        match how {
            Stop::Kill => rx.kill(),
            Stop::Term => {
                let _ = stop_rx(&mut rx);
            }
        }
        println!(
            "{:>5.1?}: receiver stopped ({how:?}, {round}) in {:?}",
            t0.elapsed(),
            stopped.elapsed()
        );
        std::thread::sleep(Duration::from_secs(3));
        rx = start_rx(&site, &rig.rx_cfg, &format!("rx{round}.log"));
    }
    let sent = wait_until(Duration::from_mins(2), || done(&site, "day9.csv"));
    assert!(sent, "the file reached done/; tx log:\n{}", tx.log_text());
    // Every row published or written down: the last gap entries come a
    // gap_timeout (5 s) after the sender's heartbeats named the blocks.
    let (settled, c, t, gaps) = settle(&rig.sub, &mut rx, rows);
    let _ = tx.terminate(Duration::from_secs(15));
    assert!(settled, "published + lost reached the rows sent");
    assert!(t.bogus.is_empty(), "bogus points: {:?}", t.bogus.first());
    assert!(!gaps.is_empty(), "the down-time lost something to count");
    // A clean loopback: every loss was the receiver's down-time, also the
    // blocks the sender had interleaved on the wire across a restart.
    assert!(
        gaps.iter().all(|g| g["cause"] == "receiver_down"),
        "causes: {gaps:?}"
    );
    assert_ledger_is_exact(&t, &gaps, 9, rows, "day9.csv");
    assert_nothing_forged(&c);
}

#[test]
fn receiver_killed_and_down_for_seconds_counts_the_loss_to_the_record() {
    receiver_down_mid_stream(Stop::Kill);
}

#[test]
fn receiver_stopped_and_down_for_seconds_counts_the_loss_to_the_record() {
    receiver_down_mid_stream(Stop::Term);
}

/// Start `weir-tx send` with `args` in the background.
fn start_push(site: &Site, config: &Path, args: &[String], log: &str) -> Process {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = config.display().to_string();
    let all = [&["send", "--quiet", "--config", config.as_str()][..], &args].concat();
    Process::start("weir-tx send", &binaries().tx, &all, site.path(log))
}

/// The receiver is killed in the middle of a one-shot push (day 4) and is
/// still down when that push ends and while `missed` more pushes run whole
/// (days 5, 6, …); it is back for a last one (day 1). Nothing of the
/// pushes it was down for says, after the kill, what they sent, until the
/// last push's heartbeats carry how they ended (the newest four). The
/// gap entries and `session_missed` events, by push, then the
/// published points and counters.
fn pushes_while_down(missed: u32) -> (Tally, HashMap<u32, Vec<Json>>, Vec<Json>) {
    let site = Site::new();
    let rig = rig(&site, SLOW_MBPS, |_| {});
    let mut send = site.send_config(rig.rx_addr, &rig.key);
    send["link"]["rate_mbps"] = toml::Value::Float(SLOW_MBPS);
    send["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(8 * 1024);
    let send_cfg = site.write_toml("send.toml", &send);
    // The last push's epoch, kept beside the sender's state.
    let state = PathBuf::from(send["sender"]["state_path"].as_str().expect("state"));
    let last_epoch = || -> u64 {
        let f = std::fs::read(state.with_extension("push.json")).expect("push state");
        serde_json::from_slice::<Json>(&f).expect("push state")["epoch"]
            .as_u64()
            .expect("epoch")
    };
    // Push an export of `rows` rows for `day` to its end; its epoch.
    let push_day = |day: u32, rows: usize| {
        let csv = site.write(&format!("day{day}.csv"), &aveva_export(day, rows));
        let csv = csv.display().to_string();
        push(
            &send_cfg,
            &["--format", "aveva-csv", "--tz", "America/Chicago", &csv],
        );
        last_epoch()
    };
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx0.log");
    let csv = site.write("day4.csv", &aveva_export(4, 6000));
    let args = ["--format", "aveva-csv", "--tz", "America/Chicago"]
        .into_iter()
        .chain([csv.to_str().expect("path")])
        .map(String::from)
        .collect::<Vec<_>>();
    let mut push1 = start_push(&site, &send_cfg, &args, "push1.log");
    assert!(
        wait_distinct(&rig.sub, 300, Duration::from_secs(30)),
        "push 1 reached the receiver; rx log:\n{}",
        rx.log_text()
    );
    rx.kill();
    let ended = wait_until(Duration::from_mins(2), || !push1.running());
    assert!(ended, "push 1 ended; its log:\n{}", push1.log_text());
    let mut epoch_day = HashMap::from([(last_epoch(), 4)]);
    let missed_rows = if missed == 1 { 1500 } else { 300 };
    for day in 5..5 + missed {
        epoch_day.insert(push_day(day, missed_rows), day);
    }
    rx = start_rx(&site, &rig.rx_cfg, "rx1.log");
    push_day(1, 500);
    // The last push arrives; the pushes it carries are written down
    // within a gap_timeout.
    let carried = missed.min(4) as usize;
    let arrived = wait_until(Duration::from_secs(40), || {
        Tally::of(&rig.sub).has_all(1, 500) && sessions_missed(&rig.sub).len() >= carried
    });
    assert!(
        arrived,
        "the last push and the missed ones; rx log:\n{}",
        rx.log_text()
    );
    let total = 6000 + missed_rows * missed as usize + 500;
    let (_, c, t, gaps) = settle(&rig.sub, &mut rx, total);
    assert!(t.bogus.is_empty(), "bogus points: {:?}", t.bogus.first());
    assert_nothing_forged(&c);
    let mut by_day: HashMap<u32, Vec<Json>> = HashMap::new();
    for g in gaps {
        let epoch = g["epoch"].as_u64().expect("epoch");
        let day = *epoch_day
            .get(&epoch)
            .unwrap_or_else(|| panic!("a push's gap: {g}"));
        by_day.entry(day).or_default().push(g);
    }
    (t, by_day, sessions_missed(&rig.sub))
}

/// The `session_missed` audit events a subscriber got.
fn sessions_missed(sub: &Subscriber) -> Vec<Json> {
    sub.on(AUDIT)
        .iter()
        .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
        .filter(|e| e["type"] == "session_missed")
        .collect()
}

/// One push while the receiver was down: the first push's tail and all
/// of the second are counted, to the record, beside what was published.
#[test]
fn pushes_the_receiver_was_down_for_are_counted_by_the_next_push() {
    let (t, by_day, missed) = pushes_while_down(1);
    assert_eq!(by_day.len(), 2, "two pushes lost records: {by_day:?}");
    assert_ledger_is_exact(&t, &by_day[&4], 4, 6000, "day4.csv");
    assert_ledger_is_exact(&t, &by_day[&5], 5, 1500, "day5.csv");
    assert!(
        missed.iter().any(|e| e["records"] == 1500),
        "the second push is said to be missed whole: {missed:?}"
    );
}

/// Five pushes while the receiver was down: the last push carries the
/// newest four, counted whole; the first push's end is no longer known,
/// and is written down with its count unknown and the reason, never
/// passed over.
#[test]
fn more_pushes_missed_than_a_heartbeat_carries_leave_an_uncounted_entry() {
    let (t, by_day, missed) = pushes_while_down(5);
    for day in 6..=9 {
        assert_ledger_is_exact(&t, &by_day[&day], day.into(), 300, &format!("day{day}.csv"));
    }
    assert_eq!(missed.len(), 4, "the four carried: {missed:?}");
    let first = &by_day[&4];
    assert!(
        !first.is_empty()
            && first.iter().all(|g| g["records"].is_null()
                && g["records_unknown_because"]
                    .as_str()
                    .is_some_and(|r| r.contains("how it ended is not known"))),
        "the first push's end: {first:?}"
    );
    assert!(
        !by_day.contains_key(&5),
        "day 5's push is beyond what is carried"
    );
}

/// The receiver's whole state (outbox, gap ledger, session book) on one
/// small tmpfs, its broker away so nothing drains: the disk fills up
/// mid-push. Every record is published once the broker is back, or is
/// in the gap ledger, to the record: also in the ledger file on the full
/// disk.
#[test]
fn receiver_disk_full_published_plus_ledger_equals_sent() {
    let site = Site::new();
    let disk = Tmpfs::mount(&site.path("state"), "6m")
        .unwrap_or_else(|why| panic!("the full-disk test needs a tmpfs (run as root): {why}"));
    let on_disk = |name: &str| toml::Value::String(disk.path.join(name).display().to_string());
    let mut rig = rig(&site, 200.0, |cfg| {
        cfg["outbox"]["path"] = on_disk("outbox.redb");
        cfg["ledger"]["gaps_path"] = on_disk("gaps.jsonl");
        cfg["ledger"]["sessions_path"] = on_disk("sessions.json");
    });
    let send_cfg = site.write_toml("send.toml", &site.send_config(rig.rx_addr, &rig.key));
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx.log");
    rig.broker.stop();
    std::thread::sleep(Duration::from_secs(1));
    // Leave about 400 KiB: the push below needs several MiB.
    let free = disk.free_bytes().expect("free bytes");
    let ballast = usize::try_from(free.saturating_sub(400 << 10)).expect("size");
    std::fs::write(disk.path.join("ballast"), vec![0x55u8; ballast]).expect("ballast");
    let rows = 40_000;
    let csv = site.write("day7.csv", &aveva_export(7, rows));
    let tz = ["--format", "aveva-csv", "--tz", "America/Chicago"];
    push(
        &send_cfg,
        &[&tz[..], &[csv.display().to_string().as_str()]].concat(),
    );
    let full = wait_until(Duration::from_secs(20), || {
        rx.log_text().contains("No space left on device")
    });
    assert!(full, "the disk filled up; rx log:\n{}", rx.log_text());
    rx.signal("STOP");
    rig.broker.resume();
    assert!(rig.sub.wait_subscribed(2, Duration::from_secs(10)));
    rx.signal("CONT");
    let settled = wait_until(Duration::from_mins(1), || {
        distinct_rows(&rig.sub) as u64 + gap_records(&rig.sub) >= rows as u64
    });
    assert!(rx.running(), "rx survived:\n{}", rx.log_text());
    let c = stop_rx(&mut rx);
    let t = Tally::of(&rig.sub);
    let gaps = distinct_gaps(&rig.sub);
    println!(
        "{} of {rows} published, {} in {} gap entries; counters {c}",
        t.distinct(),
        gap_records(&rig.sub),
        gaps.len()
    );
    assert!(settled, "published + lost reached the rows sent");
    assert!(
        counter(&c, "outbox_refused") > 0,
        "the full disk refused blocks: {c}"
    );
    assert!(
        gaps.iter()
            .all(|g| g["cause"] == "outbox_error" || g["cause"] == "outbox_full"),
        "only the disk lost anything: {gaps:?}"
    );
    assert_ledger_is_exact(&t, &gaps, 7, rows, "day7.csv");
    assert_eq!(counter(&c, "records_lost"), gap_records(&rig.sub), "{c}");
    // The ledger file on the full disk has every entry.
    let file = std::fs::read_to_string(disk.path.join("gaps.jsonl")).expect("gaps file");
    let in_file: u64 = file
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter_map(|g| g["records"].as_u64())
        .sum();
    assert_eq!(
        in_file,
        gap_records(&rig.sub),
        "the gaps file on the full disk is whole"
    );
}
