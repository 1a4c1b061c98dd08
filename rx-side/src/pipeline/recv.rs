//! Stage 1, `recv`: batched UDP receive.
//!
//! ```text
//!  socket ──(recvmmsg ×32, GRO-coalesced segments split by stride)──> RecvBatch ──> verify
//! ```
//!
//! One receive call returns up to 32 buffers, each possibly holding several
//! datagrams the kernel coalesced (GRO); they are copied back to back into
//! one batch buffer, so the cost per datagram is a copy, not an allocation.
//! A batch takes its bytes from the receive [`Budget`] first: when decode
//! falls behind, the datagrams wait in the kernel's socket buffer, not here.

use std::io::IoSliceMut;
use std::sync::Arc;

use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use weir_shared::config::ValidRx;

use super::budget::Budget;
use super::{RecvBatch, StageError};
use crate::stats::{RxStats, add, charge_cpu, thread_cpu};

/// Largest GRO-coalesced buffer the kernel hands back.
pub const GRO_BUF: usize = 64 * 1024;

/// The datagrams of one receive buffer: the kernel's GRO coalesces
/// datagrams of one length (`stride`; the last may be shorter) into it.
pub fn segments<'a>(m: &RecvMeta, buf: &'a [u8]) -> std::slice::Chunks<'a, u8> {
    let data = &buf[..m.len.min(buf.len())];
    let stride = if m.stride == 0 { data.len() } else { m.stride };
    data.chunks(stride.max(1))
}

/// Ask for a receive buffer of `want` bytes: within `net.core.rmem_max`
/// as anyone, beyond it with `SO_RCVBUFFORCE` where allowed (root, or
/// `CAP_NET_ADMIN`). Returns what the kernel granted (Linux reports twice
/// the usable size).
pub fn grow_recv_buffer(s: &socket2::Socket, want: usize) -> usize {
    let _ = s.set_recv_buffer_size(want);
    let got = s.recv_buffer_size().unwrap_or(0);
    if got >= want {
        return got;
    }
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(s, want).is_ok() {
        tracing::debug!(
            want,
            "Receive buffer set beyond net.core.rmem_max (SO_RCVBUFFORCE)."
        );
    }
    s.recv_buffer_size().unwrap_or(got)
}

/// Bind the receive socket and ask for a large receive buffer; warn, naming
/// the sysctl, when the kernel caps it.
pub fn open_socket(cfg: &ValidRx) -> anyhow::Result<UdpSocket> {
    let addr = cfg.raw.link.listen;
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let want = cfg.raw.link.recv_buffer_bytes;
    let got = grow_recv_buffer(&s, want);
    if got < want {
        tracing::warn!(
            requested = want,
            granted = got,
            "Receive buffer capped by the kernel: raise net.core.rmem_max (sysctl) to avoid drops at high rates."
        );
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// Run until cancelled.
pub async fn run(
    socket: UdpSocket,
    stats: Arc<RxStats>,
    cancel: CancellationToken,
    budget: Budget,
    to_verify: Sender<RecvBatch>,
) -> Result<(), StageError> {
    let state = UdpSocketState::new((&socket).into())?;
    let mut storage = vec![0u8; BATCH_SIZE * GRO_BUF];
    let mut meta = [RecvMeta::default(); BATCH_SIZE];
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = socket.readable() => r?,
        }
        let cpu = thread_cpu();
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.chunks_mut(GRO_BUF).map(IoSliceMut::new).collect();
        let n = match socket.try_io(Interest::READABLE, || {
            state.recv((&socket).into(), &mut bufs, &mut meta)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(error = %e, "Receive failed.");
                continue;
            }
        };
        let total: usize = meta[..n].iter().map(|m| m.len).sum();
        let mut buf = Vec::with_capacity(total);
        let mut segs = Vec::with_capacity(n * 4);
        for (m, b) in meta[..n].iter().zip(bufs.iter()) {
            // An empty datagram is a datagram too: counted, then refused
            // by verify as truncated.
            if m.len == 0 {
                segs.push((buf.len(), 0));
            }
            for seg in segments(m, b) {
                segs.push((buf.len(), seg.len()));
                buf.extend_from_slice(seg);
            }
        }
        add(&stats.datagrams, segs.len() as u64);
        add(&stats.bytes, total as u64);
        charge_cpu(&stats.link_cpu_ns, cpu);
        // The budget is taken once the batch is made (so the meter above
        // spans one stretch of work, not an await): what waits between
        // recv and decode is the budget and at most this one batch more.
        let held = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            h = budget.take(total) => h,
        };
        let batch = RecvBatch { buf, segs, held };
        if to_verify.send(batch).await.is_err() {
            return Err(StageError::Closed("recv"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(len: usize, stride: usize) -> RecvMeta {
        let mut m = RecvMeta::default();
        m.len = len;
        m.stride = stride;
        m
    }

    #[test]
    fn a_gro_buffer_splits_at_its_stride_and_a_plain_one_is_whole() {
        let buf = [7u8; 100];
        let lens = |m| segments(&m, &buf).map(<[u8]>::len).collect::<Vec<_>>();
        assert_eq!(lens(meta(25, 10)), [10, 10, 5]);
        assert_eq!(lens(meta(25, 0)), [25]);
        assert!(lens(meta(0, 0)).is_empty());
        // A length past the buffer is cut to it.
        assert_eq!(lens(meta(500, 60)), [60, 40]);
    }
}
