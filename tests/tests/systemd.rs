//! Running under systemd: the notifications of `weir-tx run` and `weir-rx
//! run` (READY, STATUS, WATCHDOG, STOPPING), and secret files read as
//! systemd credentials (`LoadCredential=`, `$CREDENTIALS_DIRECTORY`).
//!
//! The test plays the service manager: it binds the Unix datagram socket
//! that `NOTIFY_SOCKET` names, sets `WATCHDOG_USEC` (and `WATCHDOG_PID`)
//! the way systemd does for a `Type=notify` unit with `WatchdogSec=`, and
//! reads what the real programs send.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weir_tests::{
    Site, binaries, free_tcp_port, free_udp_addr, start_rx_with_env, start_tx_with_env, write_key,
};

const KEY: [u8; 32] = [0x3c; 32];

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every line received so far (a datagram carries one or more).
    lines: Vec<String>,
}

impl Manager {
    fn bind(site: &Site) -> Self {
        let path = site.path("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        Self {
            sock,
            path,
            lines: Vec::new(),
        }
    }

    /// The environment systemd gives a `Type=notify` service, with a
    /// watchdog of `watchdog` for the process `pid` (any process: `None`).
    fn env(&self, watchdog: Option<(Duration, Option<u32>)>) -> Vec<(String, String)> {
        let mut env = vec![("NOTIFY_SOCKET".into(), self.path.display().to_string())];
        if let Some((interval, pid)) = watchdog {
            env.push(("WATCHDOG_USEC".into(), interval.as_micros().to_string()));
            if let Some(pid) = pid {
                env.push(("WATCHDOG_PID".into(), pid.to_string()));
            }
        }
        env
    }

    /// Read notifications until `done` holds for the lines so far;
    /// false on timeout.
    fn wait_for(&mut self, timeout: Duration, done: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if done(&self.lines) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            if let Ok(n) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                self.lines
                    .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
            }
        }
    }

    fn count(lines: &[String], line: &str) -> usize {
        lines.iter().filter(|l| *l == line).count()
    }
}

/// A credentials directory as systemd makes it: the key inside, read-only.
fn credentials_dir(site: &Site, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = site.path("credentials");
    std::fs::create_dir_all(&dir).expect("mkdir credentials");
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write credential");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    }
    dir
}

fn key_text() -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("k");
    write_key(&p, 1, KEY);
    std::fs::read(&p).expect("read key")
}

#[test]
fn rx_notifies_ready_watchdog_status_and_stopping_and_reads_its_key_as_a_credential() {
    let site = Site::new();
    let creds = credentials_dir(&site, &[("weir-1.key", &key_text())]);
    // No broker listens: the receiver starts all the same (the outbox
    // holds what it decodes).
    let mut cfg = site.rx_config(
        free_udp_addr(),
        Path::new("/nonexistent"),
        free_tcp_port(),
        "rx-notify",
    );
    cfg["keys"]["files"] = toml::Value::Array(vec!["weir-1.key".into()]);
    let config = site.write_toml("rx.toml", &cfg);
    let mut manager = Manager::bind(&site);
    let mut env = manager.env(Some((Duration::from_millis(400), None)));
    env.push(("CREDENTIALS_DIRECTORY".into(), creds.display().to_string()));
    let mut rx = start_rx_with_env(&site, &config, "rx.log", &env);

    let ok = manager.wait_for(Duration::from_secs(20), |l| {
        Manager::count(l, "READY=1") == 1 && Manager::count(l, "WATCHDOG=1") >= 3
    });
    assert!(
        ok,
        "READY=1 and WATCHDOG=1 pings expected; got {:?}\nlog:\n{}",
        manager.lines,
        rx.log_text()
    );
    let ready_at = manager.lines.iter().position(|l| l == "READY=1");
    let first_ping = manager.lines.iter().position(|l| l == "WATCHDOG=1");
    assert!(ready_at < first_ping, "READY before the first ping");
    assert!(
        manager
            .lines
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("records received")),
        "a status line: {:?}",
        manager.lines
    );

    rx.terminate(Duration::from_secs(20));
    assert!(
        manager.wait_for(Duration::from_secs(5), |l| Manager::count(l, "STOPPING=1")
            == 1),
        "STOPPING=1 on SIGTERM: {:?}",
        manager.lines
    );
}

#[test]
fn tx_notifies_ready_watchdog_and_stopping() {
    let site = Site::new();
    let key = site.path("weir-1.key");
    write_key(&key, 1, KEY);
    // A socket standing in for the diode, so sends succeed.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("sink");
    let cfg = site.tx_config(sink.local_addr().expect("addr"), &key);
    let config = site.write_toml("tx.toml", &cfg);
    let mut manager = Manager::bind(&site);
    let env = manager.env(Some((Duration::from_millis(400), None)));
    let mut tx = start_tx_with_env(&site, &config, "tx.log", &env);

    let ok = manager.wait_for(Duration::from_secs(20), |l| {
        Manager::count(l, "READY=1") == 1 && Manager::count(l, "WATCHDOG=1") >= 3
    });
    assert!(
        ok,
        "READY=1 and WATCHDOG=1 pings expected; got {:?}\nlog:\n{}",
        manager.lines,
        tx.log_text()
    );
    assert!(
        manager
            .lines
            .iter()
            .any(|l| l.starts_with("STATUS=sent ") && l.contains("blocks")),
        "a status line: {:?}",
        manager.lines
    );
    tx.terminate(Duration::from_secs(20));
    assert!(
        manager.wait_for(Duration::from_secs(5), |l| Manager::count(l, "STOPPING=1")
            == 1),
        "STOPPING=1 on SIGTERM: {:?}",
        manager.lines
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    // systemd sets WATCHDOG_PID to the main process; a child that inherits
    // the variables must not feed the watchdog in its parent's name.
    let site = Site::new();
    let key = site.path("weir-1.key");
    write_key(&key, 1, KEY);
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("sink");
    let cfg = site.tx_config(sink.local_addr().expect("addr"), &key);
    let config = site.write_toml("tx.toml", &cfg);
    let mut manager = Manager::bind(&site);
    let env = manager.env(Some((Duration::from_millis(200), Some(1))));
    let mut tx = start_tx_with_env(&site, &config, "tx.log", &env);
    assert!(
        manager.wait_for(Duration::from_secs(20), |l| Manager::count(l, "READY=1")
            == 1),
        "READY=1: {:?}\nlog:\n{}",
        manager.lines,
        tx.log_text()
    );
    // Ten watchdog periods.
    manager.wait_for(Duration::from_secs(1), |_| false);
    assert_eq!(
        Manager::count(&manager.lines, "WATCHDOG=1"),
        0,
        "{:?}",
        manager.lines
    );
    assert!(
        manager.lines.iter().any(|l| l.starts_with("STATUS=")),
        "the status line is still kept fresh: {:?}",
        manager.lines
    );
    tx.terminate(Duration::from_secs(20));
}

/// `check-config` with the credentials directory `creds` (unset: `None`).
fn check_config(program: &Path, config: &Path, creds: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(program);
    cmd.args(["check-config", "--config", &config.display().to_string()]);
    match creds {
        Some(dir) => cmd.env("CREDENTIALS_DIRECTORY", dir),
        None => cmd.env_remove("CREDENTIALS_DIRECTORY"),
    };
    let out = cmd.output().expect("run check-config");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(file)
}

#[test]
fn the_example_configs_pass_with_their_key_as_a_credential() {
    let site = Site::new();
    let creds = credentials_dir(&site, &[("weir-1.key", &key_text())]);
    for (bin, file) in [
        (&binaries().tx, "weir-tx.toml"),
        (&binaries().rx, "weir-rx.toml"),
    ] {
        let (ok, out) = check_config(bin, &example(file), Some(&creds));
        assert!(ok && out.contains(": ok"), "{file}: {out}");
        let (ok, out) = check_config(bin, &example(file), None);
        assert!(
            !ok && out.contains("key file weir-1.key") && out.contains("CREDENTIALS_DIRECTORY"),
            "{file} without a credentials directory: {out}"
        );
    }
}

#[test]
fn credential_modes_and_names() {
    let site = Site::new();
    let creds = credentials_dir(&site, &[("weir-1.key", &key_text())]);
    let key = creds.join("weir-1.key");
    let tx = |files: &str| {
        site.write(
            "tx.toml",
            &format!(
                "[link]\ndestination = \"127.0.0.1:47000\"\nrate_mbps = 10.0\n\
                 [keys]\nfiles = [{files}]\nactive_key_id = 1\n"
            ),
        )
    };
    let config = tx("\"weir-1.key\"");
    // Where the filesystem has ACLs, systemd grants the service user read
    // access through one, and the group bits show the ACL mask.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o440)).expect("chmod");
    let (ok, out) = check_config(&binaries().tx, &config, Some(&creds));
    assert!(ok, "group bits of a credential: {out}");
    // Others' bits still count.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o404)).expect("chmod");
    let (ok, out) = check_config(&binaries().tx, &config, Some(&creds));
    assert!(!ok && out.contains("chmod 600"), "others may read: {out}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    // A relative path is a credential name, never a path below the working
    // directory or the credentials directory.
    for bad in ["\"keys/weir-1.key\"", "\"../credentials/weir-1.key\""] {
        let config = tx(bad);
        let (ok, out) = check_config(&binaries().tx, &config, Some(&creds));
        assert!(!ok && out.contains("not a plain file name"), "{bad}: {out}");
    }
    // An absolute path is read as it is, with the strict mode check.
    let config = tx(&format!("{:?}", key.display().to_string()));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o440)).expect("chmod");
    let (ok, out) = check_config(&binaries().tx, &config, Some(&creds));
    assert!(
        !ok && out.contains("chmod 600"),
        "absolute path, mode 440: {out}"
    );
}

#[test]
fn the_broker_password_can_be_a_credential() {
    let site = Site::new();
    let creds = credentials_dir(
        &site,
        &[("weir-1.key", &key_text()), ("mqtt.password", b"s3cret\n")],
    );
    let mut cfg = site.rx_config(free_udp_addr(), Path::new("weir-1.key"), 1883, "rx");
    let mqtt = cfg["mqtt"].as_table_mut().expect("[mqtt]");
    mqtt.insert("username".into(), "weir-rx".into());
    mqtt.insert("password_file".into(), "mqtt.password".into());
    let config = site.write_toml("rx.toml", &cfg);
    let (ok, out) = check_config(&binaries().rx, &config, Some(&creds));
    assert!(ok, "{out}");
    std::fs::remove_file(creds.join("mqtt.password")).expect("rm");
    let (ok, out) = check_config(&binaries().rx, &config, Some(&creds));
    assert!(
        !ok && out.contains("mqtt.password_file") && out.contains("mqtt.password"),
        "a missing credential is named by its key: {out}"
    );
}
