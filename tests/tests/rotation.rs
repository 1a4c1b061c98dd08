//! Key rotation end to end, following the procedure of README "Keys" and
//! docs/OPERATIONS.md "Rotate keys" step by step, with real `weir-tx` and
//! `weir-rx` processes over a loopback relay and a real broker:
//!
//! 0. key 1 on both sides, a spool feeding the link;
//! 1. key 2 made (`weir-rx keygen`), added to the receiver, which is
//!    restarted: it accepts keys 1 and 2;
//! 2. key 2 added to the sender, `active_key_id = 2`, sender restarted: a
//!    new session, sealed under key 2;
//! 3. once key 1's session has drained, key 1 retired on the receiver
//!    (`retired_key_ids = [1]`) and removed from both sides, both restarted.
//!
//! A file is dropped into the spool before every step, so points are in
//! flight (on the slow link, or waiting in `incoming/`) while each program
//! restarts. The sender repeats every bulk block 2 s later
//! (`repeat_after`), which rides out the receiver's restarts. Every point
//! of every file must be published exactly once, under one record id, and
//! nothing reported lost.
//!
//! Then, after retirement, key 1 must buy nothing: a sender still holding
//! it (`weir-tx send` with the old config) is refused and counted
//! (`drop_retired_key`), and so is a replay of the key-1 traffic the relay
//! captured; nothing of either is published.
//!
//! The second test is the procedure done in the wrong order (the sender
//! switched to key 2 before the receiver had it), to show the accounting
//! here notices: points are missing, the receiver counts
//! `drop_unknown_key`, and once it is given key 2 its gap ledger counts
//! the missing records exactly.

// The rotation test reads as the procedure does: one step after another.
#![allow(clippy::too_many_lines)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use weir_tests::{
    Broker, Impairment, LossyLink, Site, Subscriber, aveva_export, aveva_export_row, binaries,
    free_udp_addr, latest_status, point_payloads, run_bounded, send_paced, start_rx, start_tx,
    stop_rx, wait_until,
};

/// Rows per spool file: at [`RATE_MBPS`] a file takes a few seconds.
const ROWS: usize = 2000;
/// Slow enough that a file is mid-transfer when a step happens.
const RATE_MBPS: f64 = 0.3;
/// The sender's bulk block repeat: above the receiver's restart time.
const REPEAT_AFTER: &str = "2s";
const AUDIT: &str = "diode/v1/plant1/weir01/audit";
const GAPS: &str = "diode/v1/plant1/weir01/gaps";

/// A broker, a subscriber, a relay (capturing what the sender sent) in
/// front of the receiver's port, and the site's paths.
struct Rig {
    site: Site,
    _broker: Broker,
    broker_port: u16,
    sub: Subscriber,
    rx_addr: SocketAddr,
    relay: LossyLink,
    client_id: String,
}

fn rig(name: &str) -> Rig {
    let site = Site::new();
    let broker = Broker::start();
    let broker_port = broker.port();
    let sub = Subscriber::start(broker_port, &["uns/#", "diode/#"]);
    let rx_addr = free_udp_addr();
    let relay = LossyLink::start(rx_addr, Impairment::clean(7));
    Rig {
        site,
        _broker: broker,
        broker_port,
        sub,
        rx_addr,
        relay,
        client_id: format!("weir-rx-{name}-{}", std::process::id()),
    }
}

impl Rig {
    /// The receiver's config: the keys in `files`, `retired` refused. The
    /// same outbox, ledger and session book every time, as on a host.
    fn rx_config(&self, files: &[&Path], retired: &[u16]) -> PathBuf {
        let mut cfg =
            self.site
                .rx_config(self.rx_addr, files[0], self.broker_port, &self.client_id);
        cfg["keys"]["files"] = paths(files);
        cfg["keys"]["retired_key_ids"] =
            toml::Value::Array(retired.iter().map(|&k| i64::from(k).into()).collect());
        // Above the sender's repeat_after plus queueing (README, Tune).
        cfg["limits"]["gap_timeout"] = "8s".into();
        self.site.write_toml("rx.toml", &cfg)
    }

    /// The sender's config: the keys in `files`, sealing with `active`,
    /// through the relay, slow, small bulk blocks repeated after
    /// [`REPEAT_AFTER`].
    fn tx_config(&self, name: &str, files: &[&Path], active: u16) -> PathBuf {
        let mut cfg = self.site.tx_config(self.relay.input, files[0]);
        cfg["keys"]["files"] = paths(files);
        cfg["keys"]["active_key_id"] = i64::from(active).into();
        cfg["link"]["rate_mbps"] = RATE_MBPS.into();
        cfg["link"]["heartbeat_interval"] = "250ms".into();
        let bulk = cfg["lanes"]["bulk"]
            .as_table_mut()
            .expect("[lanes.bulk] in the example config");
        bulk.insert("max_batch_bytes".into(), 8192.into());
        bulk.insert("max_age".into(), "50ms".into());
        bulk.insert("repeat_after".into(), REPEAT_AFTER.into());
        self.site.write_toml(name, &cfg)
    }

    fn drop_day(&self, day: u32) {
        self.site.drop_file(
            "aveva",
            &format!("day{day}.csv"),
            aveva_export(day, ROWS).as_bytes(),
        );
    }

    fn sent(&self, day: u32) -> bool {
        self.site
            .path(&format!("spool/aveva/done/day{day}.csv"))
            .exists()
    }

    /// Rows of `day` published so far.
    fn published(&self, day: i64) -> usize {
        Tally::of(&self.sub)
            .rows
            .keys()
            .filter(|(d, _)| *d == day)
            .count()
    }

    /// Whether every point of `days` was published.
    fn delivered(&self, days: std::ops::RangeInclusive<i64>) -> bool {
        let t = Tally::of(&self.sub);
        days.into_iter().all(|d| t.missing(d) == 0)
    }

    /// Wait until some, but not all, of `day` was published: the file is
    /// crossing now.
    fn wait_mid_file(&self, day: u32, what: &str) {
        let day = i64::from(day);
        assert!(
            wait_until(Duration::from_secs(30), || self.published(day) >= 50),
            "{what}: points of day {day} arrive"
        );
        let n = self.published(day);
        println!("{what}: {n} of {ROWS} points of day {day} published");
        assert!(n < ROWS, "{what}: the step must happen mid-file");
    }

    fn audit(&self, kind: &str) -> Vec<Json> {
        self.sub
            .on(AUDIT)
            .iter()
            .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
            .filter(|e| e["type"] == kind)
            .collect()
    }
}

fn paths(files: &[&Path]) -> toml::Value {
    toml::Value::Array(
        files
            .iter()
            .map(|f| f.display().to_string().into())
            .collect(),
    )
}

/// `weir-tx keygen` or `weir-rx keygen`, as an operator runs it.
fn keygen(program: &Path, out: &Path, id: u16) {
    let o = run_bounded(
        Command::new(program)
            .arg("keygen")
            .arg("--out")
            .arg(out)
            .args(["--id", &id.to_string()]),
        Duration::from_secs(10),
    );
    assert!(o.status.success(), "keygen: {o:?}");
}

/// `check-config` before every restart, as the procedure says.
fn check_config(program: &Path, config: &Path) -> String {
    let o = run_bounded(
        Command::new(program)
            .arg("check-config")
            .arg("--config")
            .arg(config),
        Duration::from_secs(10),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "check-config {}: {o:?}",
        config.display()
    );
    out
}

/// What a subscriber got, by export row `(day, row)`: the record id of
/// every copy.
struct Tally {
    rows: HashMap<(i64, i64), Vec<String>>,
    bogus: Vec<String>,
}

impl Tally {
    fn of(sub: &Subscriber) -> Self {
        let mut rows: HashMap<(i64, i64), Vec<String>> = HashMap::new();
        let mut bogus = Vec::new();
        for p in point_payloads(sub) {
            match aveva_export_row(&p) {
                Ok(row) => rows
                    .entry(row)
                    .or_default()
                    .push(p["id"].as_str().unwrap_or_default().to_owned()),
                Err(e) => bogus.push(format!("{e}: {p}")),
            }
        }
        Self { rows, bogus }
    }

    fn copies(&self) -> usize {
        self.rows.values().map(Vec::len).sum()
    }

    fn missing(&self, day: i64) -> usize {
        let rows = i64::try_from(ROWS).expect("rows");
        (0..rows)
            .filter(|r| !self.rows.contains_key(&(day, *r)))
            .count()
    }

    /// Every row of `days` published exactly once under one record id,
    /// nothing else.
    fn assert_exactly_once(&self, days: &[i64]) {
        assert!(
            self.bogus.is_empty(),
            "bogus points: {:?}",
            &self.bogus[..1]
        );
        let twice: Vec<_> = self.rows.iter().filter(|(_, c)| c.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "{} points published more than once, e.g. {:?}",
            twice.len(),
            twice.first()
        );
        let ids: HashSet<&str> = self.rows.values().flatten().map(String::as_str).collect();
        assert_eq!(ids.len(), self.copies(), "one record id per point");
        for &day in days {
            assert_eq!(self.missing(day), 0, "day {day}: every point arrived");
        }
        let other: Vec<_> = self
            .rows
            .keys()
            .filter(|(d, _)| !days.contains(d))
            .collect();
        assert!(
            other.is_empty(),
            "points of no expected file: {:?}",
            other.first()
        );
        assert_eq!(self.rows.len(), days.len() * ROWS);
    }
}

fn counter(c: &Json, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {c}"))
}

/// Sum one counter over the final counters of several receiver runs.
fn total(runs: &[Json], name: &str) -> u64 {
    runs.iter().map(|c| counter(c, name)).sum()
}

/// Records the distinct `gap` events account for.
fn gap_records(sub: &Subscriber) -> (usize, u64) {
    let mut seen = HashSet::new();
    let mut records = 0;
    for m in sub.on(GAPS) {
        let g: Json = serde_json::from_slice(&m.payload).expect("gap payload is JSON");
        if g["type"] != "gap" {
            continue;
        }
        let key = format!(
            "{}/{}/{}/{}",
            g["session"], g["lane"], g["first_block"], g["last_block"]
        );
        if seen.insert(key) {
            records += g["records"].as_u64().unwrap_or(0);
        }
    }
    (seen.len(), records)
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

/// Captured datagrams sealed under `key_id`.
fn captured_under(relay: &LossyLink, key_id: u16) -> Vec<Vec<u8>> {
    relay
        .capture
        .lock()
        .expect("capture")
        .iter()
        .filter(|d| {
            weir_shared::wire::parse(d)
                .is_ok_and(|(h, _)| h.key_id == weir_shared::wire::KeyId(key_id))
        })
        .cloned()
        .collect()
}

/// After retirement: a sender still holding key 1 (a one-shot push with
/// an old config), then a replay of the key-1 traffic the relay captured.
/// Returns `drop_retired_key` as counted for each (from the status topic),
/// and how many datagrams were replayed.
fn use_key_one_after_retirement(r: &Rig, stale_key: &Path) -> (u64, u64, u64) {
    let stale = r.site.write("stale/day9.csv", &aveva_export(9, 300));
    let o = run_bounded(
        Command::new(&binaries().tx)
            .args([
                "send",
                "--quiet",
                "--format",
                "aveva-csv",
                "--tz",
                "America/Chicago",
            ])
            .arg("--config")
            .arg(r.tx_config("stale.toml", &[stale_key], 1))
            .arg(&stale),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "weir-tx send with key 1: {o:?}");
    let retired = || {
        latest_status(&r.sub).map_or(0, |s| {
            s["counters"]["drop_retired_key"].as_u64().unwrap_or(0)
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || retired() > 0),
        "the stale sender's blocks and heartbeats are counted as retired"
    );
    std::thread::sleep(Duration::from_secs(3));
    let by_stale_sender = retired();
    let replay = captured_under(&r.relay, 1);
    assert!(!replay.is_empty(), "the relay captured key-1 traffic");
    let replayed = send_paced(&replay, r.rx_addr, 32, Duration::from_millis(2));
    assert!(
        wait_until(Duration::from_secs(10), || retired() > by_stale_sender),
        "the replayed key-1 traffic is counted as retired"
    );
    std::thread::sleep(Duration::from_secs(3));
    let by_replay = retired() - by_stale_sender;

    (by_stale_sender, by_replay, replayed)
}

/// The counters of interest, summed over the receiver's runs.
fn print_totals(runs: &[Json]) {
    for name in [
        "drop_unknown_key",
        "drop_retired_key",
        "drop_old_session",
        "drop_auth",
        "dq_duplicates",
        "blocks_lost",
        "records_lost",
        "rewinds",
    ] {
        println!("  {name}: {}", total(runs, name));
    }
}

#[test]
fn rotating_keys_mid_stream_loses_nothing_and_retired_key_is_refused() {
    let t0 = Instant::now();
    let r = rig("rotation");
    let bins = binaries();
    let (tx_bin, rx_bin) = (&bins.tx, &bins.rx);
    let key1 = r.site.path("weir-1.key");
    let key2 = r.site.path("weir-2.key");
    keygen(tx_bin, &key1, 1);
    let mut runs = Vec::new();

    // 0. Key 1 on both sides, data flowing.
    let rx_cfg = r.rx_config(&[&key1], &[]);
    check_config(rx_bin, &rx_cfg);
    let mut rx = start_rx(&r.site, &rx_cfg, "rx0.log");
    let tx_cfg_1 = r.tx_config("tx1.toml", &[&key1], 1);
    check_config(tx_bin, &tx_cfg_1);
    let mut tx = start_tx(&r.site, &tx_cfg_1, "tx1.log");
    r.drop_day(1);
    r.wait_mid_file(1, "before step 1");

    // 1. Key 2 made (on the IT host here), given to the receiver, which
    //    restarts accepting both.
    r.drop_day(2);
    keygen(rx_bin, &key2, 2);
    let rx_cfg = r.rx_config(&[&key1, &key2], &[]);
    let out = check_config(rx_bin, &rx_cfg);
    assert!(out.contains("key ids [1, 2]"), "{out}");
    runs.push(stop_rx(&mut rx));
    rx = start_rx(&r.site, &rx_cfg, "rx1.log");
    println!(
        "{:>5.1?}: step 1 done, receiver takes keys 1 and 2",
        t0.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || r
            .audit("receiver_started")
            .iter()
            .any(|e| e["key_ids"] == serde_json::json!([1, 2]))),
        "the restarted receiver announces key ids [1, 2]"
    );

    // 2. Key 2 given to the sender, made active; the sender restarts.
    r.drop_day(3);
    r.wait_mid_file(3, "before step 2");
    let tx_cfg_2 = r.tx_config("tx2.toml", &[&key1, &key2], 2);
    check_config(tx_bin, &tx_cfg_2);
    let _ = tx.terminate(Duration::from_secs(20));
    tx = start_tx(&r.site, &tx_cfg_2, "tx2.log");
    println!(
        "{:>5.1?}: step 2 done, sender seals with key 2",
        t0.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(15), || r
            .audit("sender_session")
            .iter()
            .any(|e| e["key_id"] == 2)),
        "the receiver sees a sender session under key 2; rx log:\n{}",
        rx.log_text()
    );

    // 3. Key 1's traffic drained: every file the old sender took is
    //    delivered (it sends everything it took before it stops). Then
    //    retire key 1 on the receiver and remove it from both sides.
    r.drop_day(4);
    assert!(
        wait_until(Duration::from_secs(40), || r.delivered(1..=3)),
        "key 1's files delivered before its retirement"
    );
    r.wait_mid_file(4, "before step 3");
    // A copy of key 1 forgotten somewhere (a spare OT host): the stale
    // sender below uses it.
    let stale_key = r.site.path("stale-weir-1.key");
    std::fs::copy(&key1, &stale_key).expect("copy key 1");
    let rx_cfg = r.rx_config(&[&key2], &[1]);
    let out = check_config(rx_bin, &rx_cfg);
    assert!(out.contains("key ids [2]"), "{out}");
    runs.push(stop_rx(&mut rx));
    rx = start_rx(&r.site, &rx_cfg, "rx2.log");
    r.drop_day(5);
    let tx_cfg_3 = r.tx_config("tx3.toml", &[&key2], 2);
    check_config(tx_bin, &tx_cfg_3);
    let _ = tx.terminate(Duration::from_secs(20));
    tx = start_tx(&r.site, &tx_cfg_3, "tx3.log");
    std::fs::remove_file(&key1).expect("remove key 1");
    println!(
        "{:>5.1?}: step 3 done, key 1 retired and removed",
        t0.elapsed()
    );

    assert!(
        wait_until(Duration::from_mins(1), || (1..=5).all(|d| r.sent(d))),
        "every file sent; tx log:\n{}",
        tx.log_text()
    );
    wait_quiet(&r.sub, Duration::from_secs(3), Duration::from_secs(30));
    let before_stale = Tally::of(&r.sub);
    println!(
        "{:>5.1?}: all sent; {} points, {} copies",
        t0.elapsed(),
        before_stale.rows.len(),
        before_stale.copies()
    );

    let (by_stale_sender, by_replay, replayed) = use_key_one_after_retirement(&r, &stale_key);

    let _ = tx.terminate(Duration::from_secs(20));
    let last = stop_rx(&mut rx);
    runs.push(last.clone());
    let t = Tally::of(&r.sub);
    let (gaps, lost) = gap_records(&r.sub);
    println!(
        "{:>5.1?}: {} points of {} sent, {} copies; {gaps} gap entries ({lost} records); \
         drop_retired_key {by_stale_sender} from the stale sender, {by_replay} from \
         {replayed} replayed key-1 datagrams; final counters {last}",
        t0.elapsed(),
        t.rows.len(),
        5 * ROWS,
        t.copies()
    );
    print_totals(&runs);

    // No record lost, none twice, nothing of the stale sender or replay.
    t.assert_exactly_once(&[1, 2, 3, 4, 5]);
    assert_eq!(
        t.copies(),
        before_stale.copies(),
        "nothing after retirement"
    );
    assert_eq!(gaps, 0, "no gap reported: {:?}", r.sub.on(GAPS).first());
    for name in [
        "blocks_lost",
        "records_lost",
        "drop_unknown_key",
        "drop_auth",
    ] {
        assert_eq!(total(&runs, name), 0, "{name} over the receiver's runs");
    }
    // The stale key-1 sender and the replay: refused at the AEAD gate,
    // before anything else looks at them, and counted.
    assert!(by_stale_sender > 0 && by_replay > 0, "{last}");
    assert_eq!(
        counter(&last, "drop_retired_key"),
        by_stale_sender + by_replay
    );
    assert_eq!(
        total(&runs[..2], "drop_retired_key"),
        0,
        "nothing retired before step 3"
    );
}

#[test]
fn sender_switched_before_the_receiver_has_the_key_loses_visibly() {
    let r = rig("rotation-wrong");
    let bins = binaries();
    let key1 = r.site.path("weir-1.key");
    let key2 = r.site.path("weir-2.key");
    keygen(&bins.tx, &key1, 1);
    keygen(&bins.tx, &key2, 2);

    let rx_cfg = r.rx_config(&[&key1], &[]);
    let mut rx = start_rx(&r.site, &rx_cfg, "rx0.log");
    let mut tx = start_tx(&r.site, &r.tx_config("tx1.toml", &[&key1], 1), "tx1.log");
    r.drop_day(1);
    assert!(
        wait_until(Duration::from_secs(40), || r.delivered(1..=1)),
        "day 1 delivered under key 1"
    );
    // Step 2 first: the sender seals with key 2, the receiver lacks it.
    let _ = tx.terminate(Duration::from_secs(20));
    tx = start_tx(
        &r.site,
        &r.tx_config("tx2.toml", &[&key1, &key2], 2),
        "tx2.log",
    );
    r.drop_day(2);
    assert!(
        wait_until(Duration::from_mins(1), || r.sent(1) && r.sent(2)),
        "the sender sent both files; tx log:\n{}",
        tx.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    let first = stop_rx(&mut rx);
    let t = Tally::of(&r.sub);
    let missing = t.missing(1) + t.missing(2);
    println!(
        "key 2 unknown to the receiver: {missing} of {} points missing, drop_unknown_key {}",
        2 * ROWS,
        counter(&first, "drop_unknown_key")
    );
    assert!(missing > 0, "points sealed under key 2 are not published");
    assert!(
        counter(&first, "drop_unknown_key") > 0,
        "counted as unknown key: {first}"
    );

    // The fix: step 1 after all. The receiver, given key 2, learns the
    // session from its heartbeats: what is still on the link (the
    // sender's repeats) is published, and what it missed is written down
    // in the gap ledger, record by record.
    let rx_cfg = r.rx_config(&[&key1, &key2], &[]);
    let mut rx = start_rx(&r.site, &rx_cfg, "rx1.log");
    let rows = u64::try_from(ROWS).expect("rows");
    let accounted = || {
        let t = Tally::of(&r.sub);
        (ROWS - t.missing(2)) as u64 + gap_records(&r.sub).1
    };
    let counted = wait_until(Duration::from_secs(30), || accounted() >= rows);
    let _ = tx.terminate(Duration::from_secs(20));
    let second = stop_rx(&mut rx);
    let t = Tally::of(&r.sub);
    let (gaps, lost) = gap_records(&r.sub);
    let listing = run_bounded(
        Command::new(&bins.rx)
            .arg("gaps")
            .arg("--config")
            .arg(&rx_cfg),
        Duration::from_secs(10),
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    println!(
        "after key 2 reached the receiver: {} of day 2 published, {gaps} gap entries \
         counting {lost} records; `weir-rx gaps`:\n{listing}counters {second}",
        ROWS - t.missing(2)
    );
    assert!(counted, "the gap ledger accounts for every missing point");
    assert!(
        lost > 0,
        "points sealed under key 2 before the receiver had it are lost"
    );
    assert_eq!(
        lost,
        t.missing(2) as u64,
        "gap entries count exactly the points never published"
    );
    assert!(
        listing.contains(&format!("{lost} records lost")),
        "`weir-rx gaps` shows the loss"
    );
    // What was published, was published once.
    assert!(t.bogus.is_empty(), "bogus points: {:?}", t.bogus.first());
    assert!(t.rows.values().all(|c| c.len() == 1), "no point twice");
    assert_eq!(t.missing(1), 0, "day 1, under key 1, arrived whole");
}
