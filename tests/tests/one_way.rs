//! The one-way proof: a receiver in a network namespace of its own, on a
//! veth link with ARP off and IPv6 disabled, takes a whole transfer and its
//! interface transmits nothing at all.
//!
//! The sender reaches it through a static neighbour entry (no ARP), as
//! through a hardware diode. The receiver's broker runs inside the same
//! namespace, on its loopback, so MQTT never touches the link. Needs root
//! (CAP_NET_ADMIN) to create the namespace; where it cannot be created the
//! test says so and stops.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weir_tests::{
    Process, Site, aveva_export, binaries, free_tcp_port, mosquitto_path, start_tx, stop_rx,
    wait_until, write_key,
};

const KEY: [u8; 32] = [0x44; 32];

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespace and veth pair; removed on drop.
struct Net {
    ns: String,
    tx_if: String,
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.tx_if]);
    }
}

fn sysctl_in(ns: Option<&str>, key: &str) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["netns", "exec", ns, "sysctl", "-qw", key]);
    } else {
        cmd = Command::new("sysctl");
        cmd.args(["-qw", key]);
    }
    let st = cmd.status().map_err(|e| format!("sysctl {key}: {e}"))?;
    st.success()
        .then_some(())
        .ok_or_else(|| format!("sysctl {key} failed"))
}

/// Build the link: `tx_if` (root namespace) ── veth ── `rx_if` (in `ns`).
fn build(id: u32) -> Result<(Net, String, String, String), String> {
    let ns = format!("weir-ow-{id}");
    let (tx_if, rx_if) = (format!("wtx{id}"), format!("wrx{id}"));
    // Leftovers of an earlier run that was killed.
    let _ = ip(&["netns", "del", &ns]);
    let _ = ip(&["link", "del", &tx_if]);
    ip(&["netns", "add", &ns])?;
    let net = Net {
        ns: ns.clone(),
        tx_if: tx_if.clone(),
    };
    // From here on the namespace exists: a failure is a failure.
    let built = link(&net, &rx_if);
    let (tx_ip, rx_ip) = built.unwrap_or_else(|e| panic!("building the one-way link: {e}"));
    Ok((net, rx_if, tx_ip, rx_ip))
}

/// Addresses, IPv6 and ARP off, the static neighbour entry.
fn link(net: &Net, rx_if: &str) -> Result<(String, String), String> {
    let (ns, tx_if) = (net.ns.as_str(), net.tx_if.as_str());
    let id: u32 = tx_if.trim_start_matches("wtx").parse().unwrap_or(0);
    ip(&["link", "add", tx_if, "type", "veth", "peer", "name", rx_if])?;
    ip(&["link", "set", rx_if, "netns", ns])?;
    // IPv6 off before any link is up: no DAD, no router solicitations.
    sysctl_in(Some(ns), "net.ipv6.conf.all.disable_ipv6=1")?;
    sysctl_in(Some(ns), &format!("net.ipv6.conf.{rx_if}.disable_ipv6=1"))?;
    sysctl_in(None, &format!("net.ipv6.conf.{tx_if}.disable_ipv6=1"))?;
    let octet = id % 250 + 1;
    let (tx_ip, rx_ip) = (format!("10.254.{octet}.1"), format!("10.254.{octet}.2"));
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", rx_if, "arp", "off"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{rx_ip}/30"),
        "dev",
        rx_if,
    ])?;
    ip(&["-n", ns, "link", "set", rx_if, "up"])?;
    ip(&["addr", "add", &format!("{tx_ip}/30"), "dev", tx_if])?;
    ip(&["link", "set", tx_if, "up"])?;
    let show = ip(&["-n", ns, "link", "show", rx_if])?;
    let mac = show
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or("no MAC on the receiver's interface")?
        .to_owned();
    ip(&[
        "neigh",
        "replace",
        &rx_ip,
        "lladdr",
        &mac,
        "dev",
        tx_if,
        "nud",
        "permanent",
    ])?;
    Ok((tx_ip, rx_ip))
}

fn counter(ns: &str, iface: &str, name: &str) -> u64 {
    let path = format!("/sys/class/net/{iface}/statistics/{name}");
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", &path])
        .output()
        .expect("reading interface statistics");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{path} in {ns}: {out:?}"))
}

/// A program inside the namespace.
fn start_in(
    ns: &str,
    name: &str,
    program: &Path,
    args: &[&str],
    log: std::path::PathBuf,
) -> Process {
    let mut all = vec!["netns", "exec", ns, program.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    Process::start(name, Path::new("/usr/sbin/ip"), &all, log)
}

#[test]
fn the_receiver_transmits_nothing_on_its_link() {
    let mosquitto =
        mosquitto_path().expect("this test needs mosquitto (apt-get install mosquitto)");
    let (net, rx_if, tx_ip, rx_ip) = build(std::process::id() % 100_000).unwrap_or_else(|e| {
        panic!("the one-way proof builds network namespaces (run as root): {e}")
    });
    let site = Site::new();
    let key = site.path("psk.key");
    write_key(&key, 1, KEY);

    // The broker, inside the namespace, on its loopback.
    let broker_port = free_tcp_port();
    let conf = site.write(
        "mosquitto.conf",
        &format!("listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    );
    let _broker = start_in(
        &net.ns,
        "mosquitto",
        &mosquitto,
        &["-c", &conf.display().to_string()],
        site.path("mosquitto.log"),
    );

    let rx_addr =
        std::net::SocketAddr::from((rx_ip.parse::<std::net::Ipv4Addr>().expect("rx ip"), 47_000));
    let rx_cfg = site.write_toml(
        "rx.toml",
        &site.rx_config(rx_addr, &key, broker_port, "weir-rx-one-way"),
    );
    let mut rx = start_in(
        &net.ns,
        "weir-rx",
        &binaries().rx,
        &["run", "--config", &rx_cfg.display().to_string()],
        site.path("rx.log"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || rx
            .log_text()
            .contains("Connected to the MQTT broker.")),
        "weir-rx did not start in the namespace:\n{}",
        rx.log_text()
    );

    let mut tx_table = site.tx_config(rx_addr, &key);
    tx_table["link"]["bind"] = toml::Value::String(format!("{tx_ip}:0"));
    tx_table["link"]["rate_mbps"] = toml::Value::Float(50.0);
    let tx_cfg = site.write_toml("tx.toml", &tx_table);
    let mut tx = start_tx(&site, &tx_cfg, "tx.log");
    let rows = 20_000;
    site.drop_file("aveva", "day6.csv", aveva_export(6, rows).as_bytes());
    let done = site.path("spool/aveva/done/day6.csv");
    assert!(
        wait_until(Duration::from_mins(2), || done.exists()),
        "the sender finished the file; tx log:\n{}",
        tx.log_text()
    );
    // The sender's last blocks and final heartbeats, then the receiver's
    // orderly stop, which publishes what it decoded before it exits.
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rx);

    let (sent, received) = (
        counter(&net.ns, &rx_if, "tx_packets"),
        counter(&net.ns, &rx_if, "rx_packets"),
    );
    println!("receiver interface: rx_packets {received}, tx_packets {sent}; counters {c}");
    assert_eq!(
        c["records"].as_u64(),
        Some(rows as u64),
        "the whole file crossed: {c}"
    );
    assert!(
        c["acked"].as_u64() >= Some(rows as u64),
        "and was published: {c}"
    );
    assert!(received > 0, "datagrams arrived on the link");
    assert_eq!(sent, 0, "the receiver's interface transmitted nothing");
}
