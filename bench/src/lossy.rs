//! A UDP forwarder that drops a fixed share of datagrams at random.
//!
//! Loopback never loses anything, so without help the end-to-end figure
//! never exercises FEC repair. With `--loss PCT` the sender's destination is
//! this forwarder, which passes each datagram on to the receiver with
//! probability `1 − PCT/100` (seeded, so a run can be repeated). It runs on
//! its own named thread, so its CPU is reported apart from sender and
//! receiver; it forwards one datagram per system call, which caps what it
//! can carry well below what the pipeline moves without it.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Thread name prefix, for CPU accounting.
pub const THREAD_NAME: &str = "weir-lossy";

/// What the forwarder did.
#[derive(Debug, Default)]
pub struct LossyStats {
    /// Datagrams passed on.
    pub forwarded: AtomicU64,
    /// Datagrams dropped on purpose.
    pub dropped: AtomicU64,
    /// Datagrams the forwarding send refused.
    pub send_errors: AtomicU64,
}

/// A running forwarder; stopped and joined on drop.
#[derive(Debug)]
pub struct LossyLink {
    addr: SocketAddr,
    /// Counters, live.
    pub stats: Arc<LossyStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LossyLink {
    /// Forward datagrams arriving on a fresh loopback port to `to`,
    /// dropping `loss_pct` percent of them.
    pub fn start(to: SocketAddr, loss_pct: f64, seed: u64) -> std::io::Result<Self> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // As large as the kernel allows: a small buffer here would add
        // loss of its own on top of the requested share.
        let _ = s.set_recv_buffer_size(8 * 1024 * 1024);
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        let socket: UdpSocket = s.into();
        let addr = socket.local_addr()?;
        let stats = Arc::new(LossyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let p = (loss_pct / 100.0).clamp(0.0, 1.0);
        let (st, sp) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || forward(&socket, to, p, seed, &st, &sp))?;
        Ok(Self {
            addr,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the sender should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn forward(
    socket: &UdpSocket,
    to: SocketAddr,
    p: f64,
    seed: u64,
    stats: &LossyStats,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = socket.recv(&mut buf) else {
            // Read timeout (checks `stop`) or a transient error.
            continue;
        };
        if rng.random_bool(p) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        } else if socket.send_to(&buf[..n], to).is_ok() {
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
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
