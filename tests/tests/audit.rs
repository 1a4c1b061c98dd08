//! The hash-chained audit logs, end to end: a real transfer leaves an
//! intact chain on both sides; `audit verify` names the first line of
//! every kind of tampering; the receiver refuses to continue a broken
//! chain; the head it ships on the audit topic pins the log; and the
//! day's report reconciles what was sent with what was published.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value as Json;
use weir_shared::audit::{AuditRecord, hex, record_hash};
use weir_tests::{
    Broker, Site, Subscriber, aveva_export, binaries, free_udp_addr, run_bounded, start_rx,
    start_tx, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x5a; 32];
const ROWS: usize = 3000;

fn run(program: &Path, args: &[&str]) -> Output {
    run_bounded(Command::new(program).args(args), Duration::from_mins(1))
}

fn verify(program: &Path, path: &Path) -> Output {
    run(
        program,
        &["audit", "verify", "--path", &path.to_string_lossy()],
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `lines` written to `name` in the site (newline after each).
fn write_lines(site: &Site, name: &str, lines: &[String]) -> PathBuf {
    let body = lines.iter().fold(String::new(), |mut b, l| {
        b.push_str(l);
        b.push('\n');
        b
    });
    site.write(name, &body)
}

/// Verify must fail on `path`, naming `line` and saying `why`.
fn assert_refused(site_rx: &Path, path: &Path, line: usize, why: &str) {
    let out = verify(site_rx, path);
    let said = text(&out);
    assert!(
        !out.status.success(),
        "verify accepted a tampered log ({why}):\n{said}"
    );
    assert!(
        said.contains(&format!("line {line}:")) && said.contains(why),
        "verify should name line {line} ({why}):\n{said}"
    );
}

/// A real transfer; both logs intact; then each kind of tampering named.
#[test]
fn audit_logs_chain_verify_and_reconcile() {
    let bins = binaries();
    let site = Site::new();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let key = site.path("psk.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let rx_cfg = site.write_toml(
        "rx.toml",
        &site.rx_config(rx_addr, &key, broker.port(), "weir-rx-audit"),
    );
    let mut rx = start_rx(&site, &rx_cfg, "rx.log");
    let mut tx = start_tx(
        &site,
        &site.write_toml("tx.toml", &site.tx_config(rx_addr, &key)),
        "tx.log",
    );
    site.drop_file("aveva", "day1.csv", aveva_export(1, ROWS).as_bytes());

    let points = || {
        sub.on("uns/")
            .iter()
            .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
            .map(|j| (j["tag"].to_string(), j["ts"].to_string()))
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(
        wait_until(Duration::from_mins(1), || points() >= ROWS),
        "{} of {ROWS} points; rx log:\n{}",
        points(),
        rx.log_text()
    );
    // The receiver ships its chain head on the audit topic (every 30 s
    // while the log grows); by then the sender's final marks are in too.
    // Then both stop, each closing its log with a `shutdown` record.
    let shipped = || {
        sub.on("diode/")
            .iter()
            .filter(|m| m.topic.ends_with("/audit"))
            .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
            .find(|j| j["type"] == "audit_head")
    };
    assert!(
        wait_until(Duration::from_secs(45), || shipped().is_some()),
        "no audit_head event; rx log:\n{}",
        rx.log_text()
    );
    let head = shipped().expect("audit_head");
    tx.terminate(Duration::from_secs(20));
    stop_rx(&mut rx);

    let rx_log = site.path("rx-audit.jsonl");
    let tx_log = site.path("tx-audit.jsonl");
    for (program, log) in [(&bins.rx, &rx_log), (&bins.tx, &tx_log)] {
        let out = verify(program, log);
        let said = text(&out);
        assert!(out.status.success(), "intact log refused:\n{said}");
        assert!(
            said.contains(", head ") && said.contains(" records"),
            "{said}"
        );
    }
    let tx_text = std::fs::read_to_string(&tx_log).expect("tx audit log");
    for kind in [
        "startup",
        "file_taken",
        "blocks_sealed",
        "file_done",
        "shutdown",
    ] {
        assert!(
            tx_text.contains(&format!("\"kind\":\"{kind}\"")),
            "tx log lacks {kind}:\n{tx_text}"
        );
    }
    assert!(
        !tx_text.contains(&hex(&KEY)),
        "key material in the tx audit log"
    );

    if std::env::var_os("WEIR_TEST_SHOW_AUDIT").is_some() {
        println!("{tx_text}");
        println!("{}", std::fs::read_to_string(&rx_log).unwrap_or_default());
    }
    let intact: Vec<String> = std::fs::read_to_string(&rx_log)
        .expect("rx audit log")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(intact.len() >= 6, "rx log too short: {intact:?}");
    let day = AuditRecord::parse(&intact[0]).expect("first record").ts[..10].to_owned();
    // The shipped head pins the log: its record there has that hash.
    let n = usize::try_from(head["records"].as_u64().expect("records")).expect("count");
    let pinned = AuditRecord::parse(&intact[n - 1]).expect("pinned record");
    assert_eq!(
        head["head"].as_str(),
        Some(hex(&pinned.hash).as_str()),
        "{head}"
    );

    report_reconciles(&site, &bins.rx, &rx_log, &day, points());
    tamper(&site, &bins.rx, &intact);
    broken_chain_is_not_continued(&site, &bins.rx, &rx_cfg, &intact);
}

/// `weir-rx report`: the bulk flow reconciles, sent == published, no gap.
fn report_reconciles(site: &Site, rx_bin: &Path, log: &Path, day: &str, published: usize) {
    let log = log.to_string_lossy();
    let out = run(rx_bin, &["report", "--day", day, "--json", "--path", &log]);
    assert!(out.status.success(), "report failed:\n{}", text(&out));
    let r: Json = serde_json::from_slice(&out.stdout).expect("report JSON");
    let flows = r["flows"].as_array().expect("flows");
    let bulk: Vec<&Json> = flows.iter().filter(|f| f["lane"] == "bulk").collect();
    assert_eq!(bulk.len(), 1, "one bulk flow: {r:#}");
    let f = bulk[0];
    assert_eq!(f["sent_records"].as_u64(), Some(published as u64), "{r:#}");
    assert_eq!(f["received_records"], f["sent_records"], "{r:#}");
    assert_eq!(f["lost_records"], 0, "{r:#}");
    assert_eq!(f["gap_entries"], 0, "{r:#}");
    assert_eq!(f["published"], "acknowledged", "{r:#}");
    assert_eq!(f["verdict"], "reconciled", "{r:#}");
    assert!(
        f["sources"].as_array().is_some_and(|s| s
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("day1.csv")))),
        "the flow names its spool file: {r:#}"
    );
    assert_eq!(r["verdict"], "reconciled", "{r:#}");
    assert_eq!(r["audit_log"]["audit_dropped"], 0, "{r:#}");
    // Markdown and JSON files, with the controls table.
    let dir = site.path("report");
    let out = run(
        rx_bin,
        &[
            "report",
            "--day",
            day,
            "--path",
            &log,
            "--out",
            &dir.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "report --out failed:\n{}", text(&out));
    let md = std::fs::read_to_string(dir.join(format!("weir-report-{day}.md"))).expect("md");
    println!("{md}");
    for needle in [
        "3.1.3",
        "3.13.1",
        "SR 5.1",
        "SR 5.2",
        "Art. 21(2)(h)",
        "| reconciled |",
    ] {
        assert!(md.contains(needle), "report lacks {needle}:\n{md}");
    }
    assert!(dir.join(format!("weir-report-{day}.json")).exists());
}

/// Each kind of tampering, on a copy of the intact log.
fn tamper(site: &Site, rx_bin: &Path, intact: &[String]) {
    // (a) One field of record 2 edited.
    let mut edited = intact.to_vec();
    let mut v: Json = serde_json::from_str(&edited[1]).expect("json");
    v["ts"] = Json::String("2020-01-01T00:00:00.000000Z".into());
    edited[1] = v.to_string();
    assert_refused(rx_bin, &write_lines(site, "a.jsonl", &edited), 2, "edited");

    // (b) Line 3 deleted.
    let mut deleted = intact.to_vec();
    deleted.remove(2);
    assert_refused(
        rx_bin,
        &write_lines(site, "b.jsonl", &deleted),
        3,
        "missing",
    );

    // (c) Lines 2 and 3 swapped.
    let mut swapped = intact.to_vec();
    swapped.swap(1, 2);
    assert_refused(
        rx_bin,
        &write_lines(site, "c.jsonl", &swapped),
        2,
        "out of order",
    );

    // (d) The last line cut short.
    let whole = write_lines(site, "d.jsonl", intact);
    let bytes = std::fs::read(&whole).expect("read");
    std::fs::write(&whole, &bytes[..bytes.len() - 20]).expect("truncate");
    assert_refused(rx_bin, &whole, intact.len(), "truncated");

    // (e) Record 4 rewritten with a hash that fits its new content: only
    // the chain (the next record's link, here its own `prev`) shows it.
    let mut forged = intact.to_vec();
    let mut rec = AuditRecord::parse(&forged[3]).expect("record");
    rec.body = serde_json::json!({"forged": true});
    let prev = [0x11; 32];
    let hash = record_hash(rec.seq, &rec.ts, &rec.kind, &rec.body, &prev);
    forged[3] = serde_json::json!({
        "seq": rec.seq, "ts": rec.ts, "kind": rec.kind, "body": rec.body,
        "prev": hex(&prev), "hash": hex(&hash),
    })
    .to_string();
    assert_refused(
        rx_bin,
        &write_lines(site, "e.jsonl", &forged),
        4,
        "does not chain",
    );
}

/// The receiver does not start on a broken chain, and says which key.
fn broken_chain_is_not_continued(site: &Site, rx_bin: &Path, rx_cfg: &Path, intact: &[String]) {
    let mut deleted = intact.to_vec();
    deleted.remove(1);
    let broken = write_lines(site, "broken.jsonl", &deleted);
    let mut cfg: toml::Table =
        toml::from_str(&std::fs::read_to_string(rx_cfg).expect("cfg")).expect("toml");
    let mut audit = toml::Table::new();
    audit.insert(
        "path".into(),
        toml::Value::String(broken.display().to_string()),
    );
    cfg.insert("audit".into(), toml::Value::Table(audit));
    let cfg_path = site.write_toml("rx-broken.toml", &cfg);
    let out = run(rx_bin, &["run", "--config", &cfg_path.to_string_lossy()]);
    let said = text(&out);
    assert!(
        !out.status.success(),
        "receiver continued a broken chain:\n{said}"
    );
    assert!(
        said.contains("audit.path") && said.contains("line 2:"),
        "{said}"
    );
    // Nothing was appended to the broken file.
    assert_eq!(
        std::fs::read_to_string(&broken)
            .expect("read")
            .lines()
            .count(),
        deleted.len()
    );
}
