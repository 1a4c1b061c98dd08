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
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::Value as Json;
use weir_tests::{
    Broker, FakeClock, Process, Site, Subscriber, Tmpfs, aveva_export, aveva_export_row,
    binaries, free_udp_addr, latest_status, mosquitto_path, point_payloads, run_bounded,
    start_rx, start_rx_with_env, start_tx, start_tx_with_env, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x6b; 32];
const GAPS: &str = "diode/v1/plant1/weir01/gaps";
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
    let mut tx = site.tx_config(rx_addr, &key);
    tx["link"]["rate_mbps"] = toml::Value::Float(rate_mbps);
    tx["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(8 * 1024);
    tx["lanes"]["bulk"]["max_age"] = toml::Value::String("50ms".into());
    let tx_cfg = site.write_toml("tx.toml", &tx);
    Rig {
        broker,
        sub,
        key,
        rx_addr,
        rx_cfg,
        tx_cfg,
    }
}

/// One published copy of a point.
struct Copy {
    id: String,
    /// Marked late by the data-quality checks (`out_of_order` suspect).
    late: bool,
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
                    late: p["dq"]["checks"]["out_of_order"] == 3,
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
        (0..rows as i64).all(|r| self.rows.contains_key(&(day, r)))
    }

    /// Nothing bogus, and every row published exactly once under one id.
    fn assert_exactly_once(&self, expected: usize) {
        assert!(self.bogus.is_empty(), "bogus points: {:?}", &self.bogus[..1]);
        let twice: Vec<_> = self.rows.iter().filter(|(_, c)| c.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "{} rows published more than once, e.g. {:?}",
            twice.len(),
            twice.first().map(|(r, c)| (r, c.iter().map(|c| &c.id).collect::<Vec<_>>()))
        );
        let ids: HashSet<&str> = self.rows.values().flatten().map(|c| c.id.as_str()).collect();
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

/// Wait until no new message arrived for `quiet` (at most `timeout`).
fn wait_quiet(sub: &Subscriber, quiet: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = (sub.on("").len(), Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let n = sub.on("").len();
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
    let rows = 3000;
    for day in 1..=3 {
        let name = format!("day{day}.csv");
        site.drop_file("aveva", &name, aveva_export(day, rows).as_bytes());
    }
    let mut tx = start_tx(&site, &rig.tx_cfg, "tx.log");
    std::thread::sleep(Duration::from_secs(3));
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx.log");
    let sent = wait_until(Duration::from_mins(1), || {
        (1..=3).all(|d| done(&site, &format!("day{d}.csv")))
    });
    assert!(sent, "sender finished its backlog; log:\n{}", tx.log_text());
    wait_quiet(&rig.sub, Duration::from_secs(2), Duration::from_secs(20));
    assert!(rx.running(), "rx still runs:\n{}", rx.log_text());
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    let t = Tally::of(&rig.sub);
    println!(
        "{} of {} points published after joining mid-stream; gaps {:?}; counters {c}",
        t.distinct(),
        3 * rows,
        gap_events(&rig.sub)
    );
    t.assert_exactly_once(t.distinct());
    assert!(t.distinct() > 0, "the receiver published the rest of the stream");
    assert!(
        !t.has_all(1, rows),
        "the receiver joined late: the start of the backlog was never seen"
    );
    assert!(t.has_all(3, rows), "everything sent after it listened arrived");
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
    assert!(tx.running(), "sender survives an absent receiver:\n{}", tx.log_text());
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
            wait_distinct(&rig.sub, rows * round / 5, Duration::from_secs(30)),
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
    assert!(t.bogus.is_empty(), "bogus points: {:?}", t.bogus.first());
    assert!(t.has_all(5, rows), "every point delivered at least once");
    assert_eq!(t.distinct(), rows);
    assert_resends_marked(&t);
    assert!(
        counter(&c, "dq_duplicates") >= 1,
        "the exact repeat of a tag's newest point was withheld and counted: {c}"
    );
    assert_nothing_forged(&c);
}

/// A sender restarted after a crash sends its file again from the start
/// (README, "Spool directories": at-least-once, under the new session's
/// record ids). The receiver's data-quality stage withholds an exact
/// repeat of a tag's newest or last point (`dq_duplicates`), but an older
/// stretch sent again is published again, marked late (`out_of_order`
/// suspect), for consumers to de-duplicate (shared/src/dq/checks.rs). So:
/// a second copy of a point is always marked late and never carries a
/// record id already published.
fn assert_resends_marked(t: &Tally) {
    let mut resent = 0;
    for (row, copies) in &t.rows {
        let ids: HashSet<&str> = copies.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), copies.len(), "record id repeated for {row:?}");
        for c in &copies[1..] {
            resent += 1;
            assert!(
                c.late,
                "a copy of {row:?} published again without being marked late: {}",
                c.payload
            );
        }
    }
    println!("{resent} points published again, each marked late");
}

#[test]
fn receiver_killed_mid_stream_three_times_recovers_without_duplicates() {
    let site = Site::new();
    let rig = rig(&site, SLOW_MBPS, |_| {});
    let rows = 3000;
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
    }
    let sent = wait_until(Duration::from_secs(40), || done(&site, "day6.csv"));
    assert!(sent, "the file reached done/; tx log:\n{}", tx.log_text());
    wait_quiet(&rig.sub, Duration::from_secs(3), Duration::from_secs(30));
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);
    let t = Tally::of(&rig.sub);
    let gaps = gap_events(&rig.sub);
    println!(
        "{} of {rows} points ({} copies) after 3 receiver kills; {} gap events {gaps:?}; counters {c}",
        t.distinct(),
        t.copies(),
        gaps.len()
    );
    assert!(t.bogus.is_empty(), "bogus points: {:?}", t.bogus.first());
    assert_republished_identically(&t, 3 + counter(&c, "rewinds"));
    // TODO(record-level gap accounting): once gap events carry the number
    // of records they stand for (`records`), assert that nothing is lost
    // silently, also across receiver crashes:
    //     published distinct points + Σ gap_event["records"] == rows
    // i.e. `t.distinct() as u64 + gaps.iter().map(|g| g["records"]).sum() == rows`.
    // Until then only the weaker properties hold: no crash, nothing
    // published under two record ids, nothing published more often than
    // the outbox's at-least-once republishing allows, every published point
    // valid. What the killed receivers lost (socket buffer, blocks being
    // reassembled, decoded blocks not yet committed; README "What a
    // receiver crash loses") is printed above, not asserted.
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
            assert_eq!(c.payload, first.payload, "{row:?} published again, changed");
        }
        assert!(
            copies.len() as u64 <= 1 + restarts_and_rewinds,
            "{row:?} published {} times",
            copies.len()
        );
    }
    println!("{extra} republished copies (same id, same payload)");
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
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "weir-tx send failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn receiver_disk_full_is_counted_and_recovers() {
    let site = Site::new();
    let disk = match Tmpfs::mount(&site.path("small"), "8m") {
        Ok(d) => d,
        Err(why) => {
            println!("SKIP receiver_disk_full_is_counted_and_recovers: {why}");
            return;
        }
    };
    let out = disk.path.join("files");
    let outbox = disk.path.join("outbox.redb");
    let mut rig = rig(&site, 200.0, |cfg| {
        cfg["outbox"]["path"] = toml::Value::String(outbox.display().to_string());
        let mut files = toml::Table::new();
        files.insert("output_dir".into(), out.display().to_string().into());
        cfg.insert("files".into(), toml::Value::Table(files));
    });
    let send_cfg = site.write_toml("send.toml", &site.send_config(rig.rx_addr, &rig.key));
    let mut rx = start_rx(&site, &rig.rx_cfg, "rx.log");
    // Nothing drains the outbox while the broker is away.
    rig.broker.stop();
    let big = site.path("big.bin");
    let mut data = vec![0u8; 12 << 20];
    StdRng::seed_from_u64(5).fill_bytes(&mut data);
    std::fs::write(&big, &data).expect("big file");
    push(&send_cfg, &[&big.display().to_string()]);
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "free on the receiver's disk after 12 MiB: {:?} bytes",
        disk.free_bytes()
    );
    assert!(rx.running(), "rx survived a full disk:\n{}", rx.log_text());

    // Space comes back as the broker drains the outbox.
    rx.signal("STOP");
    rig.broker.resume();
    assert!(rig.sub.wait_subscribed(2, Duration::from_secs(10)));
    rx.signal("CONT");
    let reported = rig.sub.wait_for(Duration::from_secs(20), |m| {
        m.iter().any(|r| r.topic == GAPS)
    });
    // And the receiver takes new data.
    let csv = site.write("day8.csv", &aveva_export(8, 3000));
    push(
        &send_cfg,
        &["--format", "aveva-csv", "--tz", "America/Chicago", &csv.display().to_string()],
    );
    let recovered = wait_distinct(&rig.sub, 3000, Duration::from_secs(30));
    let alive = rx.running();
    let log = rx.log_text();
    let c = stop_rx(&mut rx);
    println!("counters {c}\ngaps {:?}", gap_events(&rig.sub));
    assert!(alive, "rx survived:\n{log}");
    assert!(
        counter(&c, "outbox_refused") + counter(&c, "files_refused") > 0,
        "the full disk was counted: {c}"
    );
    assert!(reported, "the loss was reported on the gaps topic");
    assert!(recovered, "new data after the disk-full arrived; log:\n{log}");
    Tally::of(&rig.sub).assert_exactly_once(3000);
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
    let clock = match FakeClock::new(site.path("faketime.offset")) {
        Ok(c) => c,
        Err(why) => {
            println!("SKIP clock jumps of {side:?}: {why}");
            return;
        }
    };
    let rig = rig(&site, SLOW_MBPS, |_| {});
    let (rx_env, tx_env) = match side {
        Side::Tx => (Vec::new(), clock.env()),
        Side::Rx => (clock.env(), Vec::new()),
    };
    let mut rx = start_rx_with_env(&site, &rig.rx_cfg, "rx.log", &rx_env);
    let mut tx = start_tx_with_env(&site, &rig.tx_cfg, "tx.log", &tx_env);
    let rows = 4500;
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
