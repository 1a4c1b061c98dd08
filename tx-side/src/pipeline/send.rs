//! Stage 6, `send`: bursts of equal-length datagrams to the UDP socket.
//!
//! ```text
//!  Burst ──(UDP GSO: one syscall per burst; plain sends as fallback)──> diode
//!        └─ completions ──> counters, "last block sent" for heartbeats, spool files done
//! ```
//!
//! `quinn-udp` owns the socket tricks: GSO where the kernel has it,
//! one datagram per call where it does not. Datagrams are sized to the MTU
//! and sent with DF set, so nothing is ever fragmented on the way.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn_udp::{Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::Receiver;
use weir_shared::config::ValidTx;

use super::{Burst, StageError};
use crate::telemetry::{Telemetry, add};

/// Most UDP payload bytes one send call carries, GSO segments included:
/// 65 535 less the IPv4 and UDP headers.
const MAX_SEND_BYTES: usize = 65_507;

/// Datagrams of `segment` bytes one GSO call may carry: a GSO send is one
/// UDP datagram to the kernel until it is cut, so all its segments
/// together must fit 64 KiB, or the call fails (EMSGSIZE) and the whole
/// burst is lost; and no more than the kernel's segment count.
pub fn per_call(max_segments: usize, segment: usize) -> usize {
    max_segments.min(MAX_SEND_BYTES / segment.max(1)).max(1)
}

/// Bind the sending socket with a large send buffer.
pub async fn open_socket(cfg: &ValidTx) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind(cfg.raw.link.bind).await?;
    let state = UdpSocketState::new((&socket).into())?;
    let want = 4 * 1024 * 1024;
    if let Err(e) = state.set_send_buffer_size((&socket).into(), want) {
        tracing::warn!(error = %e, "Could not set the send buffer size.");
    }
    Ok(socket)
}

/// Run until the pace channel closes; then tell the heartbeat we drained.
pub async fn run(
    socket: Arc<UdpSocket>,
    destination: SocketAddr,
    telemetry: Arc<Telemetry>,
    mut from_pace: Receiver<Burst>,
    drained: tokio::sync::oneshot::Sender<()>,
) -> Result<(), StageError> {
    let state = UdpSocketState::new((&*socket).into())?;
    let max_segments = state.max_gso_segments().max(1);
    while let Some(burst) = from_pace.recv().await {
        let seg = burst.segment.max(1);
        for chunk in burst.buf.chunks(seg * per_call(max_segments, seg)) {
            send_chunk(&socket, &state, destination, chunk, seg, &telemetry).await?;
        }
        add(&telemetry.datagrams, (burst.buf.len() / seg) as u64);
        add(&telemetry.wire_bytes, burst.buf.len() as u64);
        for c in burst.done {
            add(&telemetry.blocks, 1);
            add(&telemetry.records, c.records);
            add(&telemetry.repair_symbols, u64::from(c.repair));
            telemetry.block_sent(c.lane, c.seq);
            for m in &c.markers {
                m.complete(&telemetry);
            }
        }
    }
    let _ = drained.send(());
    Ok(())
}

async fn send_chunk(
    socket: &UdpSocket,
    state: &UdpSocketState,
    destination: SocketAddr,
    chunk: &[u8],
    seg: usize,
    telemetry: &Telemetry,
) -> Result<(), StageError> {
    let transmit = Transmit {
        destination,
        ecn: None,
        contents: chunk,
        segment_size: (chunk.len() > seg).then_some(seg),
        src_ip: None,
    };
    loop {
        socket.writable().await?;
        match socket.try_io(Interest::WRITABLE, || {
            state.try_send(socket.into(), &transmit)
        }) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // Nobody listening (ICMP port unreachable reported back on
            // loopback) is normal for a diode whose receiver starts later:
            // counted, not logged per datagram.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                add(&telemetry.send_errors, 1);
                return Ok(());
            }
            Err(e) => {
                add(&telemetry.send_errors, 1);
                tracing::warn!(error = %e, "Datagram send failed.");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gso_call_fits_64_kib_and_the_kernels_segment_count() {
        assert_eq!(per_call(64, 1446), 45);
        assert_eq!(per_call(8, 1446), 8);
        assert_eq!(per_call(64, 100_000), 1, "one oversized segment still goes");
        assert_eq!(per_call(0, 0), 1);
    }
}
