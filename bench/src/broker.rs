//! A throwaway Mosquitto broker on a free loopback port.
//!
//! The receiver always publishes, so an end-to-end figure needs a real
//! broker: the same Debian `mosquitto` binary operators run, started with a
//! two-line config in the harness's temporary directory and killed when the
//! handle drops. The machine's own broker on 1883 is never touched, so a
//! benchmark cannot disturb (or be disturbed by) anything else on it.
//!
//! The broker can be frozen (SIGSTOP) and thawed (SIGCONT): a frozen broker
//! keeps its connections but acknowledges nothing, so the receiver's
//! outbox fills as it would during an outage, and the drain that follows
//! the thaw can be timed on its own.

use std::cell::Cell;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `mosquitto -c FILE`; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
    frozen: Cell<bool>,
}

impl Mosquitto {
    /// Write a config into `dir`, start the broker, and wait (at most
    /// `timeout`) until it accepts TCP connections.
    pub fn start(dir: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let port = free_tcp_port()?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        let log = dir.join("mosquitto.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting `mosquitto` (Debian package `mosquitto`)")?;
        let mut broker = Self {
            child,
            port,
            log,
            frozen: Cell::new(false),
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(broker);
            }
            if let Some(status) = broker.child.try_wait()? {
                bail!(
                    "mosquitto exited ({status}) before listening; see {}",
                    broker.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mosquitto not listening on {addr} after {timeout:?}; see {}",
                    broker.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop the process (SIGSTOP): connections stay open, nothing is
    /// acknowledged until [`Self::thaw`].
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("-STOP")?;
        self.frozen.set(true);
        Ok(())
    }

    /// Let a frozen broker run again (SIGCONT); does nothing otherwise.
    pub fn thaw(&self) -> anyhow::Result<()> {
        if self.frozen.get() {
            self.signal("-CONT")?;
            self.frozen.set(false);
        }
        Ok(())
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .with_context(|| format!("running `kill {sig}`"))?;
        if !status.success() {
            bail!("`kill {sig} {}` failed: {status}", self.pid());
        }
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port that was free a moment ago. Another process could take it
/// before the broker binds; the broker then fails to start, loudly.
fn free_tcp_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free TCP port")?;
    Ok(l.local_addr()?.port())
}
