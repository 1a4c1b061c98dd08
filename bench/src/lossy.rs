//! A UDP forwarder that drops a fixed share of datagrams at random.
//!
//! Loopback never loses anything, so without help the end-to-end figure
//! never exercises FEC repair. With `--loss PCT` the sender's destination is
//! this forwarder, which passes each datagram on to the receiver with
//! probability `1 − PCT/100` (seeded, so a run can be repeated). It runs on
//! its own named thread, so its CPU is reported apart from sender and
//! receiver. Like the receiver it takes datagrams in batches (GRO-coalesced
//! where the kernel can) and, like the sender, passes the survivors on with
//! one GSO call per run of equal-length datagrams, so at gigabit rates it
//! costs a few system calls per 64 KiB, not two per datagram.

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use weir_rx::pipeline::recv::{GRO_BUF, segments};
use weir_tx::pipeline::send::per_call;

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
        let _ = weir_rx::pipeline::recv::grow_recv_buffer(&s, 32 * 1024 * 1024);
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        let socket: UdpSocket = s.into();
        let addr = socket.local_addr()?;
        let state = UdpSocketState::new((&socket).into())?;
        // (That made it non-blocking: this thread blocks, 100 ms at most.)
        socket.set_nonblocking(false)?;
        let stats = Arc::new(LossyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let p = (loss_pct / 100.0).clamp(0.0, 1.0);
        let (st, sp) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || forward(&socket, &state, to, (p, seed), &st, &sp))?;
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
    state: &UdpSocketState,
    to: SocketAddr,
    (p, seed): (f64, u64),
    stats: &LossyStats,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut storage = vec![0u8; BATCH_SIZE * GRO_BUF];
    let mut meta = [RecvMeta::default(); BATCH_SIZE];
    let mut kept = Vec::with_capacity(GRO_BUF);
    let max_segments = state.max_gso_segments().max(1);
    while !stop.load(Ordering::Relaxed) {
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.chunks_mut(GRO_BUF).map(IoSliceMut::new).collect();
        let Ok(n) = state.recv(socket.into(), &mut bufs, &mut meta) else {
            // Read timeout (checks `stop`) or a transient error.
            continue;
        };
        for (m, b) in meta[..n].iter().zip(bufs.iter()) {
            // Segments of one buffer share a length (the last may be
            // shorter): the survivors leave together, a GSO call at a time.
            let stride = if m.stride == 0 { m.len } else { m.stride }.max(1);
            let per_call = per_call(max_segments, stride);
            kept.clear();
            let mut count = 0;
            for seg in segments(m, b) {
                if rng.random_bool(p) {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                kept.extend_from_slice(seg);
                count += 1;
                if count == per_call {
                    send(socket, state, to, &kept, stride, stats);
                    kept.clear();
                    count = 0;
                }
            }
            send(socket, state, to, &kept, stride, stats);
        }
    }
}

/// Send `buf`, datagrams of `stride` bytes back to back, in one call.
fn send(
    socket: &UdpSocket,
    state: &UdpSocketState,
    to: SocketAddr,
    buf: &[u8],
    stride: usize,
    stats: &LossyStats,
) {
    if buf.is_empty() {
        return;
    }
    let count = buf.len().div_ceil(stride) as u64;
    let transmit = Transmit {
        destination: to,
        ecn: None,
        contents: buf,
        segment_size: (buf.len() > stride).then_some(stride),
        src_ip: None,
    };
    if state.try_send(socket.into(), &transmit).is_ok() {
        stats.forwarded.fetch_add(count, Ordering::Relaxed);
    } else {
        stats.send_errors.fetch_add(count, Ordering::Relaxed);
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
