//! The receiver's broker connection over TLS, for real: a throwaway CA and
//! certificates made with the `openssl` CLI at test time, a Mosquitto whose
//! TLS listener requires a client certificate *and* a password
//! (`mosquitto_passwd`), the real `weir-rx` and `weir-tx` binaries, and a
//! subscriber on a second, plain listener of the same broker.
//!
//! Mosquitto and openssl are required (CI installs both): these tests fail
//! loudly without them rather than skip.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::{
    Broker, Process, Site, Subscriber, add_syslog, aveva_export, binaries, free_tcp_port,
    free_udp_addr, mosquitto_path, start_rx, start_tx, stop_rx, wait_tcp, wait_until, write_key,
};

const KEY: [u8; 32] = [0x5a; 32];
/// The only name in the broker's certificate: the receiver dials
/// 127.0.0.1, so it connects only if `server_name` is honoured.
const BROKER_NAME: &str = "broker.weir.test";
const USER: &str = "weir-rx";
const PASSWORD: &str = "correct horse battery staple";

fn run_ok(program: &str, dir: &Path, args: &[&str]) {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Certificates for one test, all in `dir`.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A P-256 key and a self-signed CA certificate `name`.pem / `name`.key.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    run_ok(
        "openssl",
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN=Weir test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(pem)
}

/// A P-256 key and a certificate signed by `ca`, with `ext` extensions.
fn make_leaf(dir: &Path, name: &str, ca: &str, ext: &str) -> (PathBuf, PathBuf) {
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).expect("ext file");
    run_ok(
        "openssl",
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    run_ok(
        "openssl",
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
    (dir.join(pem), dir.join(key))
}

fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).expect("pki dir");
    let ca = make_ca(dir, "ca");
    let other_ca = make_ca(dir, "other-ca");
    let (server_cert, server_key) = make_leaf(
        dir,
        "server",
        "ca",
        &format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{BROKER_NAME}\n"
        ),
    );
    let (client_cert, client_key) = make_leaf(
        dir,
        "client",
        "ca",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    );
    // Mosquitto may drop root privileges before reading these.
    chmod(dir, 0o755);
    for p in [&ca, &other_ca, &server_cert, &server_key] {
        chmod(p, 0o644);
    }
    chmod(&client_key, 0o600);
    Pki {
        ca,
        other_ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// Mosquitto with a TLS listener that wants a client certificate signed by
/// `pki.ca` and `USER`/`PASSWORD`, beside the plain anonymous listener the
/// subscriber uses. Returns the broker and the TLS port.
fn tls_broker(dir: &Path, pki: &Pki) -> (Broker, u16) {
    assert!(
        mosquitto_path().is_some(),
        "this test needs mosquitto (apt-get install mosquitto)"
    );
    let passwd = dir.join("mosquitto.passwd");
    run_ok(
        "mosquitto_passwd",
        dir,
        &["-b", "-c", &passwd.display().to_string(), USER, PASSWORD],
    );
    chmod(&passwd, 0o644);
    let tls_port = free_tcp_port();
    let broker = Broker::mosquitto_with(&format!(
        "per_listener_settings true\n\
         log_type all\n\
         listener {tls_port} 127.0.0.1\n\
         allow_anonymous false\n\
         password_file {}\n\
         cafile {}\n\
         certfile {}\n\
         keyfile {}\n\
         require_certificate true\n",
        passwd.display(),
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display(),
    ));
    assert!(
        wait_tcp(tls_port, Duration::from_secs(10)),
        "mosquitto's TLS listener did not open; log:\n{}",
        broker.log_text()
    );
    (broker, tls_port)
}

/// Receiver settings of one test.
struct RxTls<'a> {
    gateway: &'a str,
    ca: &'a Path,
    password: &'a str,
}

/// The example receiver config with `[mqtt.tls]`, `username` and
/// `password_file` pointing at the TLS listener.
fn rx_config(site: &Site, pki: &Pki, tls_port: u16, listen: SocketAddr, o: &RxTls) -> PathBuf {
    let key = site.path("psk.key");
    if !key.exists() {
        write_key(&key, 1, KEY);
    }
    let pw = site.write(
        &format!("{}.password", o.gateway),
        &format!("{}\n", o.password),
    );
    chmod(&pw, 0o600);
    let mut cfg = site.rx_config(listen, &key, tls_port, &format!("rx-{}", o.gateway));
    let mqtt = cfg["mqtt"].as_table_mut().expect("[mqtt]");
    mqtt.insert("host".into(), "127.0.0.1".into());
    mqtt.insert("gateway".into(), o.gateway.into());
    mqtt.insert("keep_alive".into(), "5s".into());
    mqtt.insert("username".into(), USER.into());
    mqtt.insert("password_file".into(), pw.display().to_string().into());
    let tls: toml::Table = toml::from_str(&format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nserver_name = {BROKER_NAME:?}\n",
        o.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    ))
    .expect("tls table");
    mqtt.insert("tls".into(), toml::Value::Table(tls));
    site.write_toml(&format!("{}.toml", o.gateway), &cfg)
}

/// A sender to `rx` with an RFC 5424 syslog listener on TCP `syslog`.
fn start_sender(site: &Site, rx: SocketAddr, syslog: Option<u16>) -> Process {
    let mut cfg = site.tx_config(rx, &site.path("psk.key"));
    if let Some(port) = syslog {
        add_syslog(&mut cfg, None, Some(port));
    }
    let path = site.write_toml("tx.toml", &cfg);
    start_tx(site, &path, "tx.log")
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn points_and_alerts_arrive_over_mutual_tls_with_a_password() {
    let site = Site::new();
    let pki = make_pki(&site.path("pki"));
    let (broker, tls_port) = tls_broker(site.dir.path(), &pki);
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let rx_addr = free_udp_addr();
    let gw = "tls-ok";
    let cfg = rx_config(
        &site,
        &pki,
        tls_port,
        rx_addr,
        &RxTls {
            gateway: gw,
            ca: &pki.ca,
            password: PASSWORD,
        },
    );
    let (ok, out) = check_config(&cfg);
    assert!(ok, "check-config accepts the TLS config: {out}");
    let mut rx = start_rx(&site, &cfg, &format!("{gw}.log"));
    let syslog = free_tcp_port();
    let mut tx = start_sender(&site, rx_addr, Some(syslog));

    let rows = 3_000;
    site.drop_file("aveva", "day1.csv", aveva_export(1, rows).as_bytes());
    assert!(
        wait_tcp(syslog, Duration::from_secs(20)),
        "sender's syslog listener; tx log:\n{}",
        tx.log_text()
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", syslog)).expect("syslog tcp");
    s.write_all(b"<164>1 2024-03-10T08:01:01Z hmi plc-gw - TLS01 - weir alert over tls\n")
        .expect("syslog write");
    drop(s);

    let alerts = format!("diode/v1/plant1/{gw}/alerts/");
    let arrived = sub.wait_for(Duration::from_mins(1), |m| {
        m.iter().filter(|r| r.topic.starts_with("uns/")).count() >= rows
            && m.iter().any(|r| {
                r.topic.starts_with(&alerts)
                    && String::from_utf8_lossy(&r.payload).contains("weir alert over tls")
            })
    });
    assert!(
        arrived,
        "{} of {rows} points, alerts {:?}\nrx log:\n{}\nbroker log:\n{}",
        sub.on("uns/").len(),
        sub.on(&alerts)
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect::<Vec<_>>(),
        rx.log_text(),
        broker.log_text()
    );
    let status: Vec<Json> = sub
        .on(&format!("diode/v1/plant1/{gw}/status"))
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("status JSON"))
        .collect();
    assert!(status.iter().any(|s| s["online"] == true), "{status:?}");

    // The broker saw the receiver on its TLS listener, as USER.
    let blog = broker.log_text();
    assert!(
        blog.lines().any(|l| l.contains("New client connected")
            && l.contains(&format!("rx-{gw}"))
            && l.contains(&format!("u'{USER}'"))),
        "broker log:\n{blog}"
    );
    let rlog = rx.log_text();
    assert!(rlog.contains("MQTT over TLS."), "{rlog}");
    assert_eq!(count(&rlog, "MQTT connection error"), 0, "{rlog}");

    let _ = tx.terminate(Duration::from_secs(15));
    let stats = stop_rx(&mut rx);
    assert!(
        stats["acked"].as_u64().unwrap_or(0) >= rows as u64,
        "{stats}"
    );
}

#[test]
fn wrong_ca_or_password_delivers_nothing_and_keeps_retrying() {
    let site = Site::new();
    let pki = make_pki(&site.path("pki"));
    let (broker, tls_port) = tls_broker(site.dir.path(), &pki);
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);

    // Wrong password, with a sender feeding it points.
    let pw_addr = free_udp_addr();
    let pw_cfg = rx_config(
        &site,
        &pki,
        tls_port,
        pw_addr,
        &RxTls {
            gateway: "bad-pw",
            ca: &pki.ca,
            password: "wrong",
        },
    );
    let mut pw_rx = start_rx(&site, &pw_cfg, "bad-pw.log");
    let tx = start_sender(&site, pw_addr, None);
    site.drop_file("aveva", "day1.csv", aveva_export(1, 500).as_bytes());

    // A CA that did not sign the broker's certificate.
    let ca_addr = free_udp_addr();
    let ca_cfg = rx_config(
        &site,
        &pki,
        tls_port,
        ca_addr,
        &RxTls {
            gateway: "bad-ca",
            ca: &pki.other_ca,
            password: PASSWORD,
        },
    );
    let mut ca_rx = start_rx(&site, &ca_cfg, "bad-ca.log");

    // Backoff doubles from 100 ms: four errors take about 1.5 s, so both
    // have been retrying for a while (and the status ticker, every 2 s,
    // would have published) when this passes.
    let retried = wait_until(Duration::from_secs(30), || {
        count(&pw_rx.log_text(), "MQTT connection error") >= 4
            && count(&ca_rx.log_text(), "MQTT connection error") >= 4
    });
    assert!(
        retried,
        "bad-pw log:\n{}\nbad-ca log:\n{}",
        pw_rx.log_text(),
        ca_rx.log_text()
    );
    // The sender moves the file to done/ once sent; then give the
    // receiver (and any publish it might wrongly make) a few seconds.
    assert!(
        wait_until(Duration::from_secs(20), || site
            .path("spool/aveva/done/day1.csv")
            .exists()),
        "tx log:\n{}",
        tx.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(pw_rx.running() && ca_rx.running(), "both still running");

    let pw_log = pw_rx.log_text();
    let ca_log = ca_rx.log_text();
    // What an operator reads: a refused CONNECT, an unknown issuer.
    let pw_err = pw_log
        .lines()
        .find(|l| l.contains("MQTT connection error"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        pw_err.to_lowercase().contains("refused")
            || pw_err.contains("NotAuthorized")
            || pw_err.contains("BadUserNamePassword"),
        "{pw_log}"
    );
    let ca_err = ca_log
        .lines()
        .find(|l| l.contains("MQTT connection error"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        ca_err.contains("UnknownIssuer") || ca_err.contains("certificate"),
        "{ca_log}"
    );
    assert!(
        !pw_log.contains("Connected to the MQTT broker."),
        "{pw_log}"
    );
    assert!(
        !ca_log.contains("Connected to the MQTT broker."),
        "{ca_log}"
    );

    // Nothing reached the broker from either.
    let got: Vec<String> = sub
        .messages
        .lock()
        .map(|m| m.iter().map(|r| r.topic.clone()).collect())
        .unwrap_or_default();
    assert!(got.is_empty(), "delivered: {got:?}");

    // The sender's data did reach the receiver: it sits in the outbox.
    assert!(pw_log.contains("New sender session."), "{pw_log}");
    println!("wrong password: {pw_err}\nwrong CA: {ca_err}");
    // Both are killed on drop: a receiver that never reached its broker
    // does not finish a graceful shutdown (see the report on `publish`).
    drop((tx, pw_rx, ca_rx));
}

fn check_config(cfg: &Path) -> (bool, String) {
    let out = Command::new(&binaries().rx)
        .args(["check-config", "--config", &cfg.display().to_string()])
        .output()
        .expect("weir-rx check-config");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_config_names_bad_tls_and_password_keys() {
    let site = Site::new();
    let pki = make_pki(&site.path("pki"));
    let listen = SocketAddr::from(([127, 0, 0, 1], 47_000));
    let good = || {
        let p = rx_config(
            &site,
            &pki,
            8883,
            listen,
            &RxTls {
                gateway: "gw",
                ca: &pki.ca,
                password: PASSWORD,
            },
        );
        let t: toml::Table =
            toml::from_str(&std::fs::read_to_string(&p).expect("read")).expect("parse");
        t
    };
    let check = |name: &str, t: &toml::Table| check_config(&site.write_toml(name, t));
    let (ok, out) = check("good.toml", &good());
    assert!(ok, "{out}");

    let mut t = good();
    t["mqtt"]["tls"]
        .as_table_mut()
        .expect("tls")
        .remove("key_file");
    let (ok, out) = check("no-key.toml", &t);
    assert!(!ok && out.contains("mqtt.tls.key_file"), "{out}");

    let mut t = good();
    t["mqtt"]["tls"]["ca_file"] = site.path("missing-ca.pem").display().to_string().into();
    let (ok, out) = check("missing-ca.toml", &t);
    assert!(
        !ok && out.contains("mqtt.tls.ca_file") && out.contains("missing-ca.pem"),
        "{out}"
    );

    // A certificate file holding no certificate (the key, by mistake).
    let mut t = good();
    t["mqtt"]["tls"]["cert_file"] = pki.client_key.display().to_string().into();
    let (ok, out) = check("key-as-cert.toml", &t);
    assert!(!ok && out.contains("mqtt.tls.cert_file"), "{out}");

    // A key that is not the certificate's.
    let mut t = good();
    t["mqtt"]["tls"]["key_file"] = site.path("pki/server.key").display().to_string().into();
    chmod(&site.path("pki/server.key"), 0o600);
    let (ok, out) = check("wrong-key.toml", &t);
    assert!(!ok && out.contains("mqtt.tls.key_file"), "{out}");

    // Secret files others can read are refused, like key files.
    let open_pw = site.write("open.password", "x\n");
    chmod(&open_pw, 0o644);
    let mut t = good();
    t["mqtt"]["password_file"] = open_pw.display().to_string().into();
    let (ok, out) = check("open-pw.toml", &t);
    assert!(
        !ok && out.contains("mqtt.password_file") && out.contains("chmod 600"),
        "{out}"
    );
    let open_key = site.path("open-client.key");
    std::fs::copy(&pki.client_key, &open_key).expect("copy key");
    chmod(&open_key, 0o640);
    let mut t = good();
    t["mqtt"]["tls"]["key_file"] = open_key.display().to_string().into();
    let (ok, out) = check("open-key.toml", &t);
    assert!(
        !ok && out.contains("mqtt.tls.key_file") && out.contains("chmod 600"),
        "{out}"
    );

    let mut t = good();
    t["mqtt"].as_table_mut().expect("mqtt").remove("username");
    let (ok, out) = check("no-user.toml", &t);
    assert!(!ok && out.contains("mqtt.password_file"), "{out}");

    // `run` stops at startup with the same message.
    let mut t = good();
    t["mqtt"]["tls"]["ca_file"] = site.path("missing-ca.pem").display().to_string().into();
    let p = site.write_toml("run-missing-ca.toml", &t);
    let out = Command::new(&binaries().rx)
        .args(["run", "--config", &p.display().to_string()])
        .output()
        .expect("weir-rx run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mqtt.tls.ca_file"),
        "{err}"
    );
}
