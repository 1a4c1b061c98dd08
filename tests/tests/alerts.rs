//! Alerts never wait for the receiver's disk: with the outbox's file
//! system frozen (every write and fsync on it blocks, so no commit can
//! end), alerts sent during a bulk transfer still reach the broker, in
//! order, and each once; when the disk thaws their committed entries are
//! done without being published again.
//!
//! Needs root (a loop-mounted ext4 and `fsfreeze`) and Mosquitto; fails
//! loudly without them.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use weir_tests::{
    Broker, Site, Subscriber, add_syslog, aveva_export, free_tcp_port, free_udp_addr,
    free_udp_port, mosquitto_path, start_rx, start_tx, wait_until, write_key,
};

/// A small ext4 on a loop device, mounted on a directory; unmounted when
/// dropped.
struct Disk {
    mnt: PathBuf,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{}: {e}", cmd.get_program().display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            cmd.get_program().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Disk {
    fn mount(image: &Path, mnt: &Path) -> Result<Self, String> {
        let f = std::fs::File::create(image).map_err(|e| e.to_string())?;
        f.set_len(64 << 20).map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))?;
        std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(mnt))?;
        Ok(Self {
            mnt: mnt.to_owned(),
        })
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// The disk frozen (`fsfreeze`): every write and fsync on it blocks until
/// it is thawed, which dropping this does. Declared after the programs, so
/// it is dropped before them: a frozen file system holds a process that
/// writes to it, even a killed one, and dropping a program waits for it.
struct Frozen<'a>(&'a Disk);

impl<'a> Frozen<'a> {
    fn new(disk: &'a Disk) -> Self {
        run(Command::new("fsfreeze").arg("-f").arg(&disk.mnt)).expect("fsfreeze -f");
        Self(disk)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0.mnt).status();
    }
}

/// A receiver metric, summed over its labels.
fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, _, body) = weir_tests::prom::scrape(addr).ok()?;
    Some(weir_tests::prom::parse(&body).ok()?.sum(name, labels))
}

/// The receiver's `outbox_committed` counter in the first status it
/// published after `t` (the status is published outside the outbox),
/// waiting for it at most 10 s.
fn committed_after(sub: &Subscriber, t: Instant) -> Option<u64> {
    let mut out = None;
    wait_until(Duration::from_secs(10), || {
        out = sub
            .on("diode/")
            .iter()
            .filter(|m| m.topic.ends_with("/status") && m.at > t)
            .find_map(|m| {
                let j: Json = serde_json::from_slice(&m.payload).ok()?;
                j["counters"]["outbox_committed"].as_u64()
            });
        out.is_some()
    });
    out
}

/// The alerts received so far: (tag, record id), in arrival order.
fn alerts(sub: &Subscriber) -> Vec<(String, String)> {
    sub.on("diode/")
        .iter()
        .filter(|m| m.topic.contains("/alerts/"))
        .filter_map(|m| {
            let j: Json = serde_json::from_slice(&m.payload).ok()?;
            let tag = j["message"].as_str()?.rsplit(' ').next()?.to_owned();
            Some((tag, j["id"].as_str()?.to_owned()))
        })
        .filter(|(tag, _)| tag.starts_with("fz-"))
        .collect()
}

#[test]
fn alerts_reach_the_broker_while_the_outbox_disk_is_frozen() {
    assert!(
        mosquitto_path().is_some(),
        "this test needs mosquitto (apt-get install mosquitto)"
    );
    let site = Site::new();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["diode/#", "uns/#"]);
    let key = site.path("psk.key");
    write_key(&key, 1, [0x47; 32]);
    let rx_addr = free_udp_addr();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    // Only the outbox is on the disk that freezes; the gap ledger, the
    // session book and the audit log stay on the site's.
    let mut rx_table = site.rx_config(rx_addr, &key, broker.port(), "weir-rx-alerts");
    let disk = Disk::mount(&site.path("outbox.img"), &site.path("outbox-disk"))
        .unwrap_or_else(|e| panic!("this test needs root for a loop-mounted ext4: {e}"));
    rx_table["outbox"]["path"] =
        toml::Value::String(disk.mnt.join("rx.redb").display().to_string());
    rx_table["outbox"]["retain_acked"] = toml::Value::String("1s".into());
    let mut audit = toml::Table::new();
    audit.insert(
        "path".into(),
        site.path("rx-audit.jsonl").display().to_string().into(),
    );
    rx_table.insert("audit".into(), audit.into());
    let mut m = toml::Table::new();
    m.insert("listen".into(), metrics.to_string().into());
    rx_table.insert("metrics".into(), m.into());
    let rx_cfg = site.write_toml("rx.toml", &rx_table);
    let syslog = free_udp_port();
    let mut tx_table = site.tx_config(rx_addr, &key);
    tx_table["link"]["rate_mbps"] = toml::Value::Float(10.0);
    tx_table["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(64 * 1024);
    add_syslog(&mut tx_table, Some(syslog), None);
    let tx_cfg = site.write_toml("tx.toml", &tx_table);
    let rx = start_rx(&site, &rx_cfg, "rx.log");
    let tx = start_tx(&site, &tx_cfg, "tx.log");
    assert!(
        wait_until(Duration::from_secs(20), || tx
            .log_text()
            .contains("Syslog UDP listener up.")),
        "syslog listener up:\n{}",
        tx.log_text()
    );

    // Bulk flowing through the outbox first.
    site.drop_file("aveva", "a.csv", aveva_export(1, 20_000).as_bytes());
    assert!(
        wait_until(Duration::from_mins(1), || !sub.on("uns/").is_empty()),
        "bulk points published before the freeze:\n{}",
        rx.log_text()
    );
    // No commit can end from here on; more bulk queues up for the writer.
    let frozen = Frozen::new(&disk);
    site.drop_file("aveva", "b.csv", aveva_export(2, 20_000).as_bytes());
    std::thread::sleep(Duration::from_secs(1));
    let before = committed_after(&sub, Instant::now()).expect("a status while frozen");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let n = 20;
    for i in 0..n {
        let msg = format!("<132>1 2024-03-10T08:00:00Z ids01 test - FZ - alert fz-{i:03}");
        sock.send_to(msg.as_bytes(), ("127.0.0.1", syslog))
            .expect("send");
        std::thread::sleep(Duration::from_millis(50));
    }
    let arrived = wait_until(Duration::from_secs(30), || alerts(&sub).len() >= n);
    let during = alerts(&sub);
    let after = committed_after(&sub, Instant::now()).expect("a status while frozen");
    assert!(
        arrived,
        "alerts published while the outbox's disk is frozen: {} of {n}\n{}",
        during.len(),
        rx.log_text()
    );
    assert_eq!(
        before, after,
        "no commit ended while frozen: the alerts did not wait for one"
    );
    let tags: Vec<&str> = during.iter().map(|(t, _)| t.as_str()).collect();
    let sent: Vec<String> = (0..n).map(|i| format!("fz-{i:03}")).collect();
    assert_eq!(tags, sent, "each alert once, in the order sent");

    // Thawed: the alerts are committed, and their entries are done with
    // the publish that already happened: nothing is published twice.
    drop(frozen);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_mins(1), || {
            metric(metrics, "weir_rx_outbox_committed_total", &[]).is_some_and(|c| c > after as f64)
                && metric(metrics, "weir_rx_outbox_entries", &[("table", "alert")]) == Some(0.0)
        }),
        "alert entries committed and deleted after the thaw ({:?}):\n{}",
        t.elapsed(),
        rx.log_text()
    );
    let ids: Vec<String> = alerts(&sub).into_iter().map(|(_, id)| id).collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), distinct.len()),
        (n, n),
        "no alert published again from the outbox"
    );
}
