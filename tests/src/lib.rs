//! Test harness for Weir's end-to-end tests: real binaries, real sockets,
//! a real broker.
//!
//! * [`binaries`] builds `weir-tx` and `weir-rx` once (a test package cannot
//!   see other packages' `CARGO_BIN_EXE_*`) and finds them beside the test
//!   executable.
//! * [`Broker`] starts a Mosquitto on a free loopback port (or, where no
//!   `mosquitto` binary exists, the embedded `mqtt5` broker, saying so).
//! * [`LossyLink`] is a UDP relay between the two programs with seeded
//!   random drop, duplication, reordering, burst drop and corruption, whole
//!   blocks dropped ([`BlockDrop`]) and outages ([`LossyLink::cut`]).
//! * [`Subscriber`] collects what a real MQTT client receives.
//! * [`Process`] runs a program and kills it when dropped; [`start_rx`] and
//!   [`start_tx`] run `weir-rx run` and `weir-tx run` with a config, and
//!   [`stop_rx`] reads the receiver's final counters.
//! * [`Site`] holds one test's keys, configs and spools, and writes the
//!   example configs pointed at them.
//! * Fault injection: [`send_paced`] (datagrams straight to a receiver),
//!   [`udp_socket_drops`] (what the kernel dropped before the program saw
//!   it), [`rss_kib`], [`FakeClock`] (libfaketime: one program's wall clock
//!   jumps), [`Tmpfs`] (a small disk), and [`aveva_export_row`] (which row
//!   of [`aveva_export`] a published point is).
//! * [`prom`]: a strict reader of the Prometheus text format and a scrape
//!   over HTTP (the metrics tests).

pub mod prom;

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_shared::seal::Psk;
use weir_shared::wire::KeyId;

/// Paths of the two programs, built once per test process.
pub struct Binaries {
    /// `weir-tx`.
    pub tx: PathBuf,
    /// `weir-rx`.
    pub rx: PathBuf,
}

/// Build (if needed) and locate `weir-tx` and `weir-rx`.
///
/// # Panics
/// If the build fails: every end-to-end test needs them.
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        // The test executable lives in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "weir-tx", "-p", "weir-rx"]);
        // The test runner sets CARGO_* variables describing this test crate;
        // build scripts watching them would see a changed environment and
        // rebuild on every run. Hand the nested build a clean one, but keep
        // the settings of the outer build (profile, incremental, jobs):
        // without them it would build everything again, differently.
        let keep = |k: &str| {
            ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL"].contains(&k)
                || k.starts_with("CARGO_PROFILE_")
                || k.starts_with("CARGO_BUILD_")
        };
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_") && !keep(&k) {
                cmd.env_remove(&*k);
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building weir-tx and weir-rx failed");
        Binaries {
            tx: profile_dir.join("weir-tx"),
            rx: profile_dir.join("weir-rx"),
        }
    })
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

/// A free UDP address on 127.0.0.1 (where a receiver can listen).
pub fn free_udp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_udp_port()))
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free tcp port")
}

/// A child process killed (SIGKILL) when dropped, its stderr in a file.
pub struct Process {
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
    name: String,
}

impl Process {
    /// Start `program args…`, stderr to `log`, stdout captured.
    pub fn start(name: &str, program: &Path, args: &[&str], log: PathBuf) -> Self {
        Self::start_with_env(name, program, args, log, &[])
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Send SIGTERM and wait (bounded) for exit; returns its stdout.
    pub fn terminate(&mut self, timeout: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(child.try_wait(), Ok(Some(_))) {
            eprintln!(
                "{} did not exit on SIGTERM within {timeout:?}; killing it",
                self.name
            );
            let _ = child.kill();
        }
        let out = child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        out.unwrap_or_default()
    }

    /// Send a signal by name (`STOP`, `CONT`, …).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", self.name);
    }

    /// SIGKILL and reap: a crash, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Write a key file with mode 0600.
pub fn write_key(path: &Path, id: u16, secret: [u8; 32]) {
    std::fs::write(path, Psk::new(KeyId(id), secret).to_file_text()).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

/// How long [`start_rx`] waits for the receiver to say it started.
const RX_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Start `weir-rx run --config <config>`, its stderr in `log` inside the
/// site, and wait (at most 20 s) until it logs `Receiver started.`: its
/// socket is bound and its pipeline runs (the broker need not be reachable
/// yet). That line is logged at `info`, the default of `WEIR_TEST_LOG`.
///
/// # Panics
/// If the receiver does not say it started in time, with its log.
pub fn start_rx(site: &Site, config: &Path, log: &str) -> Process {
    start_rx_with_env(site, config, log, &[])
}

/// Start `weir-tx run --config <config>`, its stderr in `log` inside the
/// site. Returns at once: wait for what the test needs (a listener, a
/// file in `done/`) where it matters.
pub fn start_tx(site: &Site, config: &Path, log: &str) -> Process {
    start_tx_with_env(site, config, log, &[])
}

/// Stop the receiver (SIGTERM, at most 20 s) and read the final counters
/// it prints as its last JSON line.
///
/// # Panics
/// If it printed none, with its log.
pub fn stop_rx(rx: &mut Process) -> serde_json::Value {
    let out = rx.terminate(Duration::from_secs(20));
    last_json_line(&out)
        .unwrap_or_else(|| panic!("rx printed no final counters; log:\n{}", rx.log_text()))
}

/// Run `cmd` to its end with stdin closed and stdout and stderr captured;
/// kill it if it is still running after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", cmd.get_program().display()));
    let deadline = Instant::now() + timeout;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collecting output")
}

/// Wait until `f` holds (polled every 100 ms); false on timeout.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// An MQTT broker on a free loopback port.
pub enum Broker {
    /// A Mosquitto process.
    Mosquitto {
        /// Its port.
        port: u16,
        /// The process.
        process: Process,
        /// Its config file's directory.
        dir: tempfile::TempDir,
    },
    /// The in-process `mqtt5` broker, running on its own runtime thread.
    Embedded {
        /// Its port.
        port: u16,
        /// Keeps the runtime alive.
        _runtime: tokio::runtime::Runtime,
    },
}

/// Whether a `mosquitto` binary is on this machine.
pub fn mosquitto_path() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/local/bin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Broker {
    /// Start Mosquitto on a free port, or the embedded broker where
    /// Mosquitto is not installed (printed, so the run says which).
    pub fn start() -> Self {
        if let Some(bin) = mosquitto_path() {
            Self::mosquitto(&bin)
        } else {
            println!("NOTE: no mosquitto binary found; using the embedded mqtt5 broker instead");
            Self::embedded()
        }
    }

    /// Start Mosquitto with `conf_extra` (config lines: more listeners,
    /// TLS, authentication) written ahead of the plain anonymous listener
    /// on [`Broker::port`]. Start it with `per_listener_settings true` to
    /// keep its listeners' security apart from the plain one's. Needs
    /// Mosquitto: there is no fallback.
    pub fn mosquitto_with(conf_extra: &str) -> Self {
        let bin = mosquitto_path().expect("this test needs mosquitto (apt-get install mosquitto)");
        Self::mosquitto_conf(&bin, conf_extra)
    }

    fn mosquitto(bin: &Path) -> Self {
        Self::mosquitto_conf(bin, "")
    }

    fn mosquitto_conf(bin: &Path, conf_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = free_tcp_port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("{conf_extra}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\n"),
            )
            .expect("broker config");
            let conf_s = conf.to_string_lossy().into_owned();
            let mut process = Process::start(
                "mosquitto",
                bin,
                &["-c", &conf_s],
                dir.path().join("mosquitto.log"),
            );
            if wait_tcp(port, Duration::from_secs(5)) && process.running() {
                return Self::Mosquitto { port, process, dir };
            }
        }
        panic!("mosquitto did not start on a free port");
    }

    fn embedded() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("broker runtime");
        let port = runtime
            .block_on(start_embedded_broker())
            .expect("embedded broker");
        Self::Embedded {
            port,
            _runtime: runtime,
        }
    }

    /// Kill the broker (SIGKILL: with persistence off it forgets every
    /// session and queued message). Needs Mosquitto.
    pub fn stop(&mut self) {
        match self {
            Self::Mosquitto { process, .. } => process.kill(),
            Self::Embedded { .. } => panic!("stopping the broker needs mosquitto installed"),
        }
    }

    /// Start a stopped broker again on the same port.
    pub fn resume(&mut self) {
        let Self::Mosquitto { port, process, dir } = self else {
            panic!("restarting the broker needs mosquitto installed");
        };
        let bin = mosquitto_path().expect("mosquitto binary");
        let conf = dir
            .path()
            .join("mosquitto.conf")
            .to_string_lossy()
            .into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            *process = Process::start(
                "mosquitto",
                &bin,
                &["-c", &conf],
                dir.path().join("mosquitto.log"),
            );
            if wait_tcp(*port, Duration::from_secs(2)) && process.running() {
                return;
            }
            // The port may still be in TIME_WAIT from the killed broker.
            assert!(
                Instant::now() < deadline,
                "mosquitto did not restart on port {port}"
            );
        }
    }

    /// Mosquitto's log so far (the embedded broker keeps none).
    pub fn log_text(&self) -> String {
        match self {
            Self::Mosquitto { process, .. } => process.log_text(),
            Self::Embedded { .. } => String::new(),
        }
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Mosquitto { port, .. } | Self::Embedded { port, .. } => *port,
        }
    }
}

/// Start the in-process `mqtt5` broker on a free loopback port, on the
/// current tokio runtime; returns its port.
pub async fn start_embedded_broker() -> std::io::Result<u16> {
    let mut config = mqtt5::broker::BrokerConfig {
        bind_addresses: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        ..Default::default()
    };
    config.auth_config.allow_anonymous = true;
    config.storage_config.enable_persistence = false;
    config.storage_config.backend = mqtt5::broker::config::StorageBackend::Memory;
    let mut broker = mqtt5::broker::MqttBroker::with_config(config)
        .await
        .map_err(std::io::Error::other)?;
    let port = broker
        .local_addr()
        .map(|a| a.port())
        .ok_or_else(|| std::io::Error::other("embedded broker has no address"))?;
    tokio::spawn(async move { broker.run().await });
    Ok(port)
}

/// Wait until something accepts TCP connections on 127.0.0.1:`port`
/// (polled every 50 ms); false on timeout.
pub fn wait_tcp(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What the relay does to the traffic (probabilities per datagram).
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Seed of the random choices.
    pub seed: u64,
    /// Probability a datagram is dropped.
    pub drop: f64,
    /// Probability a datagram is sent twice.
    pub duplicate: f64,
    /// Probability a datagram is held back and sent after the next few.
    pub reorder: f64,
    /// Probability a burst of loss starts at a datagram.
    pub burst: f64,
    /// Length of a loss burst.
    pub burst_len: u32,
    /// One burst placed by hand: the datagrams numbered `at..at + len`,
    /// counting every datagram the relay saw from 0.
    pub burst_at: Option<(u64, u32)>,
    /// Probability a datagram has one byte flipped.
    pub corrupt: f64,
}

impl Impairment {
    /// A clean link.
    pub fn clean(seed: u64) -> Self {
        Self {
            seed,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            burst: 0.0,
            burst_len: 0,
            burst_at: None,
            corrupt: 0.0,
        }
    }
}

/// Counters of the relay.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Datagrams received from the sender.
    pub seen: AtomicU64,
    /// Datagrams dropped (random and burst).
    pub dropped: AtomicU64,
    /// Extra copies sent.
    pub duplicated: AtomicU64,
    /// Datagrams delivered out of order.
    pub reordered: AtomicU64,
    /// Datagrams corrupted.
    pub corrupted: AtomicU64,
    /// Datagrams dropped because their block is one of [`BlockDrop`]'s.
    pub block_dropped: AtomicU64,
    /// Datagrams dropped during an outage ([`LossyLink::cut`]).
    pub outage_dropped: AtomicU64,
}

/// Blocks the relay drops whole: every symbol datagram of blocks
/// `first..=last` of `lane`, in every session. An unrecoverable loss, for
/// tests of what the receiver reports when FEC cannot help.
#[derive(Debug, Clone, Copy)]
pub struct BlockDrop {
    /// The lane.
    pub lane: weir_shared::lane::Lane,
    /// First block dropped.
    pub first: u64,
    /// Last block dropped (inclusive).
    pub last: u64,
}

impl BlockDrop {
    /// Whether datagram `d` is a symbol of one of these blocks.
    fn hits(&self, d: &[u8]) -> bool {
        weir_shared::wire::parse(d).is_ok_and(|(h, _)| {
            h.kind == weir_shared::wire::Kind::Symbol
                && h.lane == self.lane
                && (self.first..=self.last).contains(&h.seq)
        })
    }
}

/// A UDP relay with seeded impairments, and a capture of what it saw.
pub struct LossyLink {
    /// Where the sender should send.
    pub input: SocketAddr,
    /// Counters.
    pub stats: Arc<LinkStats>,
    /// Every datagram seen, as sent by the sender (for replay tests).
    pub capture: Arc<Mutex<Vec<Vec<u8>>>>,
    /// While the link is cut: until when.
    down_until: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LossyLink {
    /// Relay from a fresh loopback port to `output`.
    pub fn start(output: SocketAddr, imp: Impairment) -> Self {
        Self::start_with(output, imp, None)
    }

    /// Like [`LossyLink::start`], also dropping every datagram of `blocks`.
    pub fn start_dropping(output: SocketAddr, imp: Impairment, blocks: BlockDrop) -> Self {
        Self::start_with(output, imp, Some(blocks))
    }

    fn start_with(output: SocketAddr, imp: Impairment, blocks: Option<BlockDrop>) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
        // A diode does not drop what arrives within its rate: give the relay
        // room for the sender's bursts, so the only loss is the impairment.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let input = sock.local_addr().expect("relay addr");
        let stats = Arc::new(LinkStats::default());
        let capture = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let down_until = Arc::new(Mutex::new(None));
        let (st, cap, stp) = (stats.clone(), capture.clone(), stop.clone());
        let down = down_until.clone();
        let thread = std::thread::spawn(move || {
            relay(&sock, output, (imp, blocks, &down), &st, &cap, &stp);
        });
        Self {
            input,
            stats,
            capture,
            down_until,
            stop,
            thread: Some(thread),
        }
    }

    /// Cut the link for `duration` from now: an outage, as of a diode
    /// whose far side lost power or a cable pulled. Every datagram that
    /// arrives meanwhile is dropped (counted in `outage_dropped`), before
    /// any other impairment.
    pub fn cut(&self, duration: Duration) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = Some(Instant::now() + duration);
        }
    }

    /// Whether the link is cut now.
    pub fn is_cut(&self) -> bool {
        self.down_until
            .lock()
            .is_ok_and(|d| d.is_some_and(|t| Instant::now() < t))
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(
    sock: &UdpSocket,
    output: SocketAddr,
    (imp, blocks, down_until): (Impairment, Option<BlockDrop>, &Mutex<Option<Instant>>),
    stats: &LinkStats,
    capture: &Mutex<Vec<Vec<u8>>>,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(imp.seed);
    let mut buf = vec![0u8; 65_536];
    let mut held: VecDeque<(Vec<u8>, u32)> = VecDeque::new();
    let mut burst_left = 0u32;
    let out = UdpSocket::bind("127.0.0.1:0").expect("relay out");
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = sock.recv(&mut buf) else {
            // Idle: release anything held back.
            while let Some((d, _)) = held.pop_front() {
                let _ = out.send_to(&d, output);
            }
            continue;
        };
        let mut d = buf[..n].to_vec();
        let index = stats.seen.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = capture.lock() {
            c.push(d.clone());
        }
        let cut = down_until
            .lock()
            .is_ok_and(|t| t.is_some_and(|t| Instant::now() < t));
        if cut {
            stats.outage_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if blocks.is_some_and(|b| b.hits(&d)) {
            stats.block_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Release held datagrams whose delay ran out.
        for h in &mut held {
            h.1 = h.1.saturating_sub(1);
        }
        while held.front().is_some_and(|h| h.1 == 0) {
            if let Some((h, _)) = held.pop_front() {
                let _ = out.send_to(&h, output);
            }
        }
        if imp
            .burst_at
            .is_some_and(|(at, len)| (at..at + u64::from(len)).contains(&index))
        {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if burst_left == 0 && imp.burst > 0.0 && rng.random_bool(imp.burst) {
            burst_left = imp.burst_len;
        }
        if burst_left > 0 {
            burst_left -= 1;
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if imp.drop > 0.0 && rng.random_bool(imp.drop) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if imp.corrupt > 0.0 && rng.random_bool(imp.corrupt) {
            let i = rng.random_range(0..d.len());
            d[i] ^= 1 << rng.random_range(0..8);
            stats.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        if imp.duplicate > 0.0 && rng.random_bool(imp.duplicate) {
            let _ = out.send_to(&d, output);
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        if imp.reorder > 0.0 && rng.random_bool(imp.reorder) {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            held.push_back((d, rng.random_range(1..8)));
            continue;
        }
        let _ = out.send_to(&d, output);
    }
}

/// A message a subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained flag.
    pub retain: bool,
    /// When the subscriber received it.
    pub at: Instant,
}

/// An MQTT subscriber collecting everything under some filters. It keeps
/// a persistent session, reconnects quickly, and subscribes again when the
/// broker forgot its session (a restart without persistence).
pub struct Subscriber {
    /// Messages so far.
    pub messages: Arc<Mutex<Vec<Received>>>,
    /// Subscription rounds the broker acknowledged (1 after `start`).
    pub subscribed: Arc<AtomicU64>,
    runtime: tokio::runtime::Runtime,
}

impl Subscriber {
    /// Connect to `port` and subscribe to `filters` at QoS 1; returns once
    /// the subscriptions are acknowledged.
    pub fn start(port: u16, filters: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("subscriber runtime");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicU64::new(0));
        let (msgs, rounds) = (messages.clone(), subscribed.clone());
        let filters: Vec<String> = filters.iter().map(|s| (*s).to_owned()).collect();
        runtime.block_on(async move {
            static N: AtomicU64 = AtomicU64::new(0);
            let id = format!(
                "weir-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let mut opts = rumqttc::MqttOptions::new(id, ("127.0.0.1", port));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            opts.set_keep_alive(30);
            opts.set_clean_session(false);
            let (client, mut eventloop) =
                rumqttc::AsyncClient::builder(opts).capacity(1000).build();
            let sub = client.clone();
            let n_filters = filters.len();
            let subscribe = move |c: rumqttc::AsyncClient, filters: Vec<String>| async move {
                for f in filters {
                    let _ = c.subscribe(f, rumqttc::QoS::AtLeastOnce).await;
                }
            };
            let again = filters.clone();
            tokio::spawn(async move {
                let mut suback_left = n_filters;
                let mut connected_before = false;
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            if let Ok(mut m) = msgs.lock() {
                                m.push(Received {
                                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                    payload: p.payload.to_vec(),
                                    retain: p.retain,
                                    at: Instant::now(),
                                });
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                            if connected_before && !ack.session_present {
                                suback_left = n_filters;
                                tokio::spawn(subscribe(sub.clone(), again.clone()));
                            }
                            connected_before = true;
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            suback_left = suback_left.saturating_sub(1);
                            if suback_left == 0 {
                                rounds.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            });
            for f in filters {
                client
                    .subscribe(f, rumqttc::QoS::AtLeastOnce)
                    .await
                    .expect("subscribe");
            }
            // Keep the client alive for the runtime's lifetime.
            std::mem::forget(client);
        });
        let s = Self {
            messages,
            subscribed,
            runtime,
        };
        assert!(
            s.wait_subscribed(1, Duration::from_secs(10)),
            "subscriptions acknowledged in time"
        );
        s
    }

    /// Wait until `rounds` subscription rounds were acknowledged.
    pub fn wait_subscribed(&self, rounds: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.subscribed.load(Ordering::SeqCst) >= rounds {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Messages whose topic starts with `prefix`.
    pub fn on(&self, prefix: &str) -> Vec<Received> {
        self.messages
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|r| r.topic.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Wait until `pred` holds over the messages, or the timeout.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.messages.lock().is_ok_and(|m| pred(&m)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Nothing to do: dropping the runtime ends the client task.
        let _ = &self.runtime;
    }
}

/// A sender/receiver pair's working directory: keys, configs, spool.
pub struct Site {
    /// The directory.
    pub dir: tempfile::TempDir,
}

impl Site {
    /// A fresh directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a file inside it.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let mut f = std::fs::File::create(&p).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        p
    }
}

impl Site {
    /// The example receiver config pointed at this site: listening on
    /// `listen`, keyed with `key`, publishing to the broker on
    /// `broker_port` as client `client_id`, with its outbox in the site.
    /// Returned as a table for the caller to adjust, then [`Site::write_toml`].
    pub fn rx_config(
        &self,
        listen: SocketAddr,
        key: &Path,
        broker_port: u16,
        client_id: &str,
    ) -> toml::Table {
        let example = include_str!("../../systemd/weir-rx.toml");
        let mut cfg: toml::Table = toml::from_str(example).expect("example rx config parses");
        cfg["link"]["listen"] = toml::Value::String(listen.to_string());
        cfg["keys"]["files"] =
            toml::Value::Array(vec![toml::Value::String(key.display().to_string())]);
        cfg["mqtt"]["port"] = toml::Value::Integer(i64::from(broker_port));
        cfg["mqtt"]["client_id"] = toml::Value::String(client_id.to_owned());
        cfg["limits"]["gap_timeout"] = toml::Value::String("5s".into());
        cfg["outbox"]["path"] = toml::Value::String(
            self.path(&format!("{client_id}.redb"))
                .display()
                .to_string(),
        );
        cfg["ledger"]["gaps_path"] = toml::Value::String(
            self.path(&format!("{client_id}-gaps.jsonl"))
                .display()
                .to_string(),
        );
        cfg["ledger"]["sessions_path"] = toml::Value::String(
            self.path(&format!("{client_id}-sessions.json"))
                .display()
                .to_string(),
        );
        cfg
    }

    /// The example sender config pointed at this site: sending to
    /// `destination` at 200 Mbit/s keyed with `key`, its spools under
    /// `spool/<name>/`, scanned every 100 ms.
    pub fn tx_config(&self, destination: SocketAddr, key: &Path) -> toml::Table {
        let example = include_str!("../../systemd/weir-tx.toml");
        let mut cfg: toml::Table = toml::from_str(example).expect("example tx config parses");
        cfg["link"]["destination"] = toml::Value::String(destination.to_string());
        cfg["link"]["bind"] = toml::Value::String("127.0.0.1:0".into());
        cfg["link"]["rate_mbps"] = toml::Value::Float(200.0);
        cfg["keys"]["files"] =
            toml::Value::Array(vec![toml::Value::String(key.display().to_string())]);
        cfg["alert_queue"]["path"] =
            toml::Value::String(self.path("tx-alert-queue.redb").display().to_string());
        cfg["sender"]["state_path"] =
            toml::Value::String(self.path("tx-state.json").display().to_string());
        if let Some(spools) = cfg.get_mut("spool").and_then(toml::Value::as_array_mut) {
            for s in spools.iter_mut() {
                let name = s["name"].as_str().expect("spool name").to_owned();
                s["dir"] =
                    toml::Value::String(self.path(&format!("spool/{name}")).display().to_string());
                s["scan_interval"] = toml::Value::String("100ms".into());
            }
        }
        cfg
    }

    /// The sender config for `weir-tx send`: [`Site::tx_config`] without
    /// its spools, with a heartbeat every 200 ms (so the last ones follow
    /// the data quickly).
    pub fn send_config(&self, destination: SocketAddr, key: &Path) -> toml::Table {
        let mut cfg = self.tx_config(destination, key);
        cfg.remove("spool");
        cfg["link"]["heartbeat_interval"] = toml::Value::String("200ms".into());
        cfg
    }

    /// Write a TOML table inside the site.
    pub fn write_toml(&self, name: &str, table: &toml::Table) -> PathBuf {
        self.write(name, &toml::to_string(table).expect("toml"))
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// A historian spool `name` of `format` in the sender config, under the
/// site like the example's spools, scanned every 100 ms.
///
/// # Panics
/// If the config has no `spool` array.
pub fn add_spool<'a>(
    site: &Site,
    cfg: &'a mut toml::Table,
    name: &str,
    format: &str,
) -> &'a mut toml::Table {
    let mut spool = toml::Table::new();
    spool.insert("name".into(), name.into());
    spool.insert(
        "dir".into(),
        site.path(&format!("spool/{name}"))
            .display()
            .to_string()
            .into(),
    );
    spool.insert("format".into(), format.into());
    spool.insert("scan_interval".into(), "100ms".into());
    let spools = cfg
        .get_mut("spool")
        .and_then(toml::Value::as_array_mut)
        .expect("the example sender config has spools");
    spools.push(toml::Value::Table(spool));
    spools
        .last_mut()
        .and_then(toml::Value::as_table_mut)
        .expect("the spool just added")
}

/// Add a `[[syslog]]` listener named `syslog` to a sender config, taking
/// RFC 3164/5424 messages on 127.0.0.1 at UDP port `udp` and/or TCP port
/// `tcp`, their local times read as UTC.
pub fn add_syslog(cfg: &mut toml::Table, udp: Option<u16>, tcp: Option<u16>) {
    let mut listener = toml::Table::new();
    listener.insert("name".into(), "syslog".into());
    if let Some(port) = udp {
        listener.insert("udp".into(), format!("127.0.0.1:{port}").into());
    }
    if let Some(port) = tcp {
        listener.insert("tcp".into(), format!("127.0.0.1:{port}").into());
    }
    listener.insert("tz".into(), "UTC".into());
    let listeners = cfg
        .entry("syslog")
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .expect("`syslog` is an array of tables");
    listeners.push(toml::Value::Table(listener));
}

/// An AVEVA History export of `rows` rows (at most 86 400) of three tags,
/// one sample a second on day `day` of March 2024: every (tag, time) is
/// distinct across days.
pub fn aveva_export(day: u32, rows: usize) -> String {
    use std::fmt::Write as _;
    assert!((1..=28).contains(&day) && rows <= 86_400);
    let mut s = String::from("DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n");
    for i in 0..rows {
        let (h, m, sec) = (i / 3600, i / 60 % 60, i % 60);
        let v = (i as f64) * 0.5;
        let _ = writeln!(
            s,
            "2024-03-{day:02} {h:02}:{m:02}:{sec:02}.0000000,LOAD.T{},{v},{v},0,192,192",
            i % 3
        );
    }
    s
}

impl Site {
    /// Drop a file into a spool the way a well-behaved writer does: write
    /// under a temporary name, then rename into `incoming/`.
    pub fn drop_file(&self, spool: &str, name: &str, bytes: &[u8]) {
        let incoming = self.path(&format!("spool/{spool}/incoming"));
        std::fs::create_dir_all(&incoming).expect("incoming dir");
        let tmp = incoming.join(format!("{name}.part"));
        std::fs::write(&tmp, bytes).expect("spool write");
        std::fs::rename(&tmp, incoming.join(name)).expect("spool rename");
    }
}

/// The Python that runs the Sparkplug scripts (`PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A script of `tests/sparkplug/` (pysparkplug-based decoder and command
/// builder).
pub fn sparkplug_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sparkplug")
        .join(name)
}

/// pysparkplug 0.5.0 importable by [`python`], or a loud failure with the
/// install hint: the Sparkplug tests never skip.
pub fn require_pysparkplug() {
    const INSTALL_HINT: &str = "pip install pysparkplug==0.5.0";
    let out = Command::new(python())
        .args([
            "-c",
            "import pysparkplug, sys; sys.stdout.write(pysparkplug.__version__)",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "pysparkplug is not importable by `{}`: {INSTALL_HINT}\n{}",
            python(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run `{}` ({e}); install Python 3, then {INSTALL_HINT}",
            python()
        ),
    }
}

/// Decode Sparkplug messages `(topic, payload)`, in order, with the
/// third-party decoder (`tests/sparkplug/decode.py`, pysparkplug); one JSON
/// summary per message.
pub fn decode_sparkplug<'a>(
    messages: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<serde_json::Value> {
    use std::fmt::Write as _;
    let mut input = String::new();
    for (topic, payload) in messages {
        let _ = write!(input, "{topic} ");
        for b in payload {
            let _ = write!(input, "{b:02x}");
        }
        input.push('\n');
    }
    let mut child = Command::new(python())
        .arg(sparkplug_script("decode.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running decode.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to decode.py");
    let out = child.wait_with_output().expect("decode.py output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "decode.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("decode.py prints JSON");
    assert_eq!(doc["decoder"], "pysparkplug 0.5.0");
    doc["messages"].as_array().expect("messages").clone()
}

/// Read a fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// Parse the last JSON line a program printed on stdout.
pub fn last_json_line(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

// ---------------------------------------------------------------------
// Fault injection (tests/tests/hostile.rs, tests/tests/faults.rs)
// ---------------------------------------------------------------------

impl Process {
    /// Like [`Process::start`], with extra environment variables (for
    /// example libfaketime's, see [`FakeClock`]).
    pub fn start_with_env(
        name: &str,
        program: &Path,
        args: &[&str],
        log: PathBuf,
        env: &[(String, String)],
    ) -> Self {
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Self {
            child: Some(child),
            log,
            name: name.into(),
        }
    }
}

/// [`start_rx`] with extra environment variables.
///
/// # Panics
/// If the receiver does not say it started in time, with its log.
pub fn start_rx_with_env(
    site: &Site,
    config: &Path,
    log: &str,
    env: &[(String, String)],
) -> Process {
    let rx = Process::start_with_env(
        "weir-rx",
        &binaries().rx,
        &["run", "--config", &config.display().to_string()],
        site.path(log),
        env,
    );
    let deadline = Instant::now() + RX_START_TIMEOUT;
    while !rx.log_text().contains("Receiver started.") {
        assert!(
            Instant::now() < deadline,
            "weir-rx did not start:\n{}",
            rx.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rx
}

/// [`start_tx`] with extra environment variables.
pub fn start_tx_with_env(
    site: &Site,
    config: &Path,
    log: &str,
    env: &[(String, String)],
) -> Process {
    Process::start_with_env(
        "weir-tx",
        &binaries().tx,
        &["run", "--config", &config.display().to_string()],
        site.path(log),
        env,
    )
}

/// Resident memory (`VmRSS` of `/proc/<pid>/status`) of a process, KiB;
/// `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Datagrams the kernel dropped at the UDP socket bound to
/// 127.0.0.1:`port` (receive buffer full), from `/proc/net/udp`; `None`
/// when no such socket is listed. These never reach the program, so its
/// own counters cannot include them: tests subtract them.
pub fn udp_socket_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()))
            .then(|| f.last().and_then(|d| d.parse().ok()))
            .flatten()
    })
}

/// Send `datagrams` from a fresh loopback socket to `target`, `burst` at a
/// time with `pause` between bursts (a receiver's socket buffer is
/// finite); returns how many were sent.
pub fn send_paced<D: AsRef<[u8]>>(
    datagrams: impl IntoIterator<Item = D>,
    target: SocketAddr,
    burst: usize,
    pause: Duration,
) -> u64 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("sender socket");
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(4 << 20);
    let mut n = 0u64;
    for (i, d) in datagrams.into_iter().enumerate() {
        // A full send buffer is a transient: retry it.
        while let Err(e) = sock.send_to(d.as_ref(), target) {
            assert!(
                e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(ENOBUFS),
                "sending to {target}: {e}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        n += 1;
        if (i + 1) % burst.max(1) == 0 {
            std::thread::sleep(pause);
        }
    }
    n
}

/// `ENOBUFS` on Linux: a transient on a busy loopback.
const ENOBUFS: i32 = 105;

/// The latest retained status a subscriber received on
/// `diode/v1/plant1/weir01/status` (the example config's names).
pub fn latest_status(sub: &Subscriber) -> Option<serde_json::Value> {
    sub.on("diode/v1/plant1/weir01/status")
        .iter()
        .rev()
        .find_map(|m| serde_json::from_slice(&m.payload).ok())
}

/// A wall clock for one program that a test can move: libfaketime
/// preloaded, reading its offset from a file on every call, the monotonic
/// clock left alone (so timers and pacing keep real time and only what the
/// program reads as the time of day jumps).
pub struct FakeClock {
    lib: PathBuf,
    file: PathBuf,
}

/// Where Debian's `faketime` package puts libfaketime.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl FakeClock {
    /// A clock at offset 0 whose offset lives in `file`; `Err` with the
    /// reason when libfaketime is not installed (`apt-get install faketime`).
    pub fn new(file: PathBuf) -> Result<Self, String> {
        let lib = PathBuf::from(LIBFAKETIME);
        if !lib.exists() {
            return Err(format!(
                "{} missing: apt-get install faketime",
                lib.display()
            ));
        }
        let clock = Self { lib, file };
        clock.set_offset_secs(0);
        Ok(clock)
    }

    /// The environment that puts a program on this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file.display().to_string(),
            ),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// Move the clock to real time plus `secs` (negative: back).
    pub fn set_offset_secs(&self, secs: i64) {
        // Written under another name and renamed, so a reader never sees
        // an empty file.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).expect("faketime file");
        std::fs::rename(&tmp, &self.file).expect("faketime file rename");
    }
}

/// A tmpfs of a given size mounted on a directory (needs root); unmounted
/// when dropped.
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`mount -o size=…`, e.g. `8m`) on `path`,
    /// creating it; `Err` with mount's reason when that is not allowed.
    pub fn mount(path: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if out.status.success() {
            Ok(Self {
                path: path.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Bytes free on it (`df`).
    pub fn free_bytes(&self) -> Option<u64> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a program still holding a file there does not keep the
        // mount (and the test's temporary directory) alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The `(day, row)` of [`aveva_export`] a published point is, if its tag,
/// time and value agree with that generator (read, as the example sender
/// config does, in America/Chicago: days 1 to 9 are standard time, UTC-6).
pub fn aveva_export_row(p: &serde_json::Value) -> Result<(i64, i64), String> {
    /// 2024-03-01T06:00:00Z: local midnight of March 1 2024.
    const MARCH_1_LOCAL: i64 = 1_709_251_200 + 6 * 3600;
    let ts_ns = p["ts_ns"].as_i64().ok_or("no ts_ns")?;
    if ts_ns % 1_000_000_000 != 0 {
        return Err(format!("fractional time {ts_ns}"));
    }
    let since = ts_ns / 1_000_000_000 - MARCH_1_LOCAL;
    let (day, row) = (since.div_euclid(86_400) + 1, since.rem_euclid(86_400));
    if !(1..10).contains(&day) {
        return Err(format!("day {day} of March is not a standard-time day"));
    }
    let tag = format!("LOAD.T{}", row % 3);
    if p["tag"].as_str() != Some(tag.as_str()) {
        return Err(format!("tag {} at row {row}, expected {tag}", p["tag"]));
    }
    if p["value"].as_f64() != Some(row as f64 * 0.5) {
        return Err(format!("value {} at row {row}", p["value"]));
    }
    Ok((day, row))
}

/// The points (JSON payloads) a subscriber received on `uns/`, in order.
///
/// # Panics
/// If a payload is not JSON.
pub fn point_payloads(sub: &Subscriber) -> Vec<serde_json::Value> {
    sub.on("uns/")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("point payload is JSON"))
        .collect()
}
