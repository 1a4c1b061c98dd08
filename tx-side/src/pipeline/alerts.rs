//! Stage 1 (alert lane), `alerts`: syslog listeners and followed alert files.
//!
//! ```text
//!  syslog UDP ──────────────────────────┐
//!  syslog TCP ──(octet-counted / LF)────┼─> parse ──> Alert ──> intake ──(alert lane: first in line)──> batch
//!  EVE / OPC UA A&C files ──(tail -F)───┘      │               └─(lane backed up)─> overflow (disk) ─┘
//!                                              └─ refused: counted (alerts_rejected), logged
//! ```
//!
//! Full-queue policy: a syslog sender cannot be slowed down, and a receive
//! loop must never wait on the disk, so no source ever waits here. An alert
//! goes straight into the alert channel while it has room; once it is full,
//! alerts spill, in order, to the bounded durable queue on disk
//! ([`super::overflow`], `[alert_queue]` in the config), and new alerts
//! queue behind them until the link has caught up. The queue survives a
//! restart and is sent first after it. Only when it is full (`max_bytes`),
//! or when even the hand-off to its writer is full, is an alert dropped,
//! counted (`alerts_dropped`, carried in every heartbeat) and logged (at
//! most once a second, with the count). The alert lane has strict priority
//! on the link, so this only happens when alerts alone outrun the link for
//! long.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_shared::alerts::eve::{EveDeduper, parse_eve};
use weir_shared::alerts::opcua_ac::parse_opcua_ac;
use weir_shared::alerts::syslog::parse_syslog;
use weir_shared::alerts::{AlertContext, AlertError, Framing, SyslogFramer};
use weir_shared::config::{FollowConfig, FollowFormat, SyslogConfig, TxConfig};
use weir_shared::record::Alert;

use super::overflow::{self, Intake};
use super::{SourceItem, StageError};
use crate::telemetry::{Telemetry, add};

/// Most TCP syslog connections served at once.
const MAX_TCP_CONNECTIONS: usize = 64;

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Where parsed alerts go, and the counters they move.
#[derive(Clone)]
struct Sink {
    intake: Intake,
    telemetry: Arc<Telemetry>,
    name: Arc<str>,
}

impl Sink {
    /// Hand over one parse result; never waits (see the full-queue policy).
    fn take(&self, parsed: Result<Alert, AlertError>) -> Result<(), StageError> {
        match parsed {
            Ok(alert) => self.intake.offer(alert)?,
            Err(AlertError::NotAnAlert) => {}
            Err(e) => {
                add(&self.telemetry.alerts_rejected, 1);
                tracing::warn!(source = %self.name, reason = e.code(), "Alert message refused.");
            }
        }
        Ok(())
    }
}

/// Open the overflow queue (alerts a previous run left in it go first),
/// then bind every configured listener and start the alert sources.
pub fn spawn(
    cfg: &TxConfig,
    telemetry: &Arc<Telemetry>,
    cancel: &CancellationToken,
    to_batch: &Sender<SourceItem>,
    tasks: &mut JoinSet<Result<(), StageError>>,
) -> anyhow::Result<()> {
    let intake = overflow::start(&cfg.alert_queue, telemetry, cancel, to_batch, tasks)?;
    for s in &cfg.syslogs {
        let sink = Sink {
            intake: intake.clone(),
            telemetry: telemetry.clone(),
            name: s.name.as_str().into(),
        };
        let tz =
            s.tz.parse()
                .map_err(|_| anyhow::anyhow!("config key `syslog.tz`: unknown zone {}", s.tz))?;
        let ctx = Ctx {
            tz,
            max: s.max_message_bytes,
        };
        if let Some(addr) = s.udp {
            let std_sock = std::net::UdpSocket::bind(addr)
                .with_context(|| format!("syslog `{}`: binding UDP {addr}", s.name))?;
            std_sock.set_nonblocking(true)?;
            let sock = UdpSocket::from_std(std_sock)?;
            tasks.spawn(udp(sock, s.clone(), ctx, sink.clone(), cancel.clone()));
            tracing::info!(name = %s.name, %addr, "Syslog UDP listener up.");
        }
        if let Some(addr) = s.tcp {
            let std_l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("syslog `{}`: binding TCP {addr}", s.name))?;
            std_l.set_nonblocking(true)?;
            let listener = TcpListener::from_std(std_l)?;
            tasks.spawn(tcp(listener, s.clone(), ctx, sink.clone(), cancel.clone()));
            tracing::info!(name = %s.name, %addr, "Syslog TCP listener up.");
        }
    }
    for f in &cfg.follows {
        let sink = Sink {
            intake: intake.clone(),
            telemetry: telemetry.clone(),
            name: f.name.as_str().into(),
        };
        tasks.spawn(follow(f.clone(), sink, cancel.clone()));
    }
    Ok(())
}

/// Zone and size limit of one source; the receive time is read per message.
#[derive(Clone, Copy)]
struct Ctx {
    tz: chrono_tz::Tz,
    max: usize,
}

impl Ctx {
    /// The parse context for a message received now.
    fn now(self) -> AlertContext {
        AlertContext {
            receive_time_ns: unix_ns(),
            tz: self.tz,
            max_message_bytes: self.max,
        }
    }
}

async fn udp(
    sock: UdpSocket,
    cfg: SyslogConfig,
    ctx: Ctx,
    sink: Sink,
    cancel: CancellationToken,
) -> Result<(), StageError> {
    // One byte more than the limit, so an oversized datagram is seen as such.
    let mut buf = vec![0u8; cfg.max_message_bytes + 1];
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, _)) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "Syslog UDP receive failed.");
                    continue;
                }
            },
        };
        sink.take(parse_syslog(&buf[..n], &ctx.now()))?;
    }
}

async fn tcp(
    listener: TcpListener,
    cfg: SyslogConfig,
    ctx: Ctx,
    sink: Sink,
    cancel: CancellationToken,
) -> Result<(), StageError> {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (mut stream, peer) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "Syslog TCP accept failed.");
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "Too many syslog TCP connections; refusing one.");
            continue;
        };
        let (sink, cancel, max) = (sink.clone(), cancel.clone(), cfg.max_message_bytes);
        tokio::spawn(async move {
            let _permit = permit;
            let mut framer = SyslogFramer::new(Framing::Auto, max);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = tokio::select! {
                    () = cancel.cancelled() => 0,
                    r = stream.read(&mut buf) => r.unwrap_or(0),
                };
                if n == 0 {
                    framer.handle_eof();
                }
                let mut input = &buf[..n];
                loop {
                    let taken = framer.handle_bytes(input);
                    input = &input[taken..];
                    while let Some(frame) = framer.poll_frame() {
                        let parsed = frame.and_then(|f| parse_syslog(f, &ctx.now()));
                        if sink.take(parsed).is_err() {
                            return;
                        }
                    }
                    if input.is_empty() || taken == 0 {
                        break;
                    }
                }
                if n == 0 {
                    return;
                }
            }
        });
    }
}

/// Follow a file like `tail -F`: new lines as they are appended, from the
/// start again when it is truncated or replaced (rotation).
///
/// A line is complete only with its newline. The last line of the file,
/// while it has none, is held (a writer may be in the middle of it, or
/// flush in blocks) and parsed once its newline arrives. If the file is
/// replaced or truncated first, or the sender stops, that line can no
/// longer be completed here: it is counted as rejected (`truncated`) and
/// logged, never parsed, since a cut JSON line can still parse as a
/// different, shorter event.
async fn follow(
    cfg: FollowConfig,
    sink: Sink,
    cancel: CancellationToken,
) -> Result<(), StageError> {
    let ctx = Ctx {
        tz: chrono_tz::UTC,
        max: cfg.max_line_bytes,
    };
    let mut dedup = EveDeduper::new(4096);
    let mut pos: Option<(u64, u64)> = None; // (inode, offset)
    let mut lines = SyslogFramer::new(Framing::LfTerminated, cfg.max_line_bytes);
    let mut tick = tokio::time::interval(cfg.poll_interval);
    let mut first = true;
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                return end_of_lines(&mut lines, &cfg, &sink, "the sender stopped");
            }
            _ = tick.tick() => {}
        }
        let Ok(meta) = std::fs::metadata(&cfg.path) else {
            continue;
        };
        let (ino, len) = (meta.ino(), meta.len());
        let offset = match pos {
            Some((i, off)) if i == ino && off <= len => off,
            Some(_) => {
                end_of_lines(
                    &mut lines,
                    &cfg,
                    &sink,
                    "the file was replaced or truncated",
                )?;
                lines = SyslogFramer::new(Framing::LfTerminated, cfg.max_line_bytes);
                0
            }
            None if first && !cfg.from_start => len,
            None => 0,
        };
        first = false;
        if offset == len {
            pos = Some((ino, len));
            continue;
        }
        let mut chunk = Vec::new();
        let read = std::fs::File::open(&cfg.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.take(len - offset).read_to_end(&mut chunk)
        });
        if let Err(e) = read {
            tracing::warn!(file = %cfg.path.display(), error = %e, "Followed file unreadable.");
            continue;
        }
        pos = Some((ino, offset + chunk.len() as u64));
        let mut input = chunk.as_slice();
        loop {
            let taken = lines.handle_bytes(input);
            input = input.get(taken..).unwrap_or_default();
            while let Some(line) = lines.poll_frame() {
                let parsed = match line {
                    Ok(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                    Ok(line) => match cfg.format {
                        FollowFormat::SuricataEve => parse_eve(line, &ctx.now())
                            .and_then(|a| dedup.handle_alert(&a).map(|()| a)),
                        FollowFormat::OpcuaAlarmsJsonl => parse_opcua_ac(line, &ctx.now()),
                    },
                    Err(e) => Err(e),
                };
                sink.take(parsed)?;
            }
            if input.is_empty() {
                break;
            }
        }
    }
}

/// The followed file's lines end here (`why`): a last line still without
/// its newline is reported as truncated, never parsed.
fn end_of_lines(
    lines: &mut SyslogFramer,
    cfg: &FollowConfig,
    sink: &Sink,
    why: &'static str,
) -> Result<(), StageError> {
    let held = lines.buffered_bytes();
    lines.handle_eof();
    while let Some(item) = lines.poll_frame() {
        // Every complete line was handed out as it arrived: only the cut
        // one (or the rest of an oversized one) is left.
        if let Err(e) = item {
            if matches!(e, AlertError::Truncated(_)) {
                tracing::warn!(
                    file = %cfg.path.display(),
                    bytes = held,
                    why,
                    "Followed file's last line has no newline: not sent (truncated)."
                );
            }
            sink.take(Err(e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use weir_shared::config::AlertQueueConfig;

    const EVE: &str = include_str!("../../../tests/fixtures/suricata_eve.jsonl");
    /// Bound on every wait: generous, never part of an assertion.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// The fixture's first EVE alert, made distinct by its flow id.
    fn eve_line(flow: u64) -> String {
        let first = EVE.lines().next().expect("fixture has lines");
        let mut v: serde_json::Value = serde_json::from_str(first).expect("fixture line is JSON");
        v["flow_id"] = flow.into();
        v.to_string()
    }

    fn append(path: &std::path::Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open to append");
        std::io::Write::write_all(&mut f, bytes).expect("append");
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let waited = tokio::time::timeout(PATIENCE, async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_followed_files_last_line_is_held_then_parsed_whole_or_refused_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eve.json");
        let second = eve_line(2);
        std::fs::write(&path, format!("{}\n{}", eve_line(1), &second[..40])).expect("write");
        let telemetry = Arc::new(Telemetry::default());
        let cancel = CancellationToken::new();
        let (to_batch, _from_sources) = tokio::sync::mpsc::channel(64);
        let mut tasks = JoinSet::new();
        let queue = AlertQueueConfig {
            path: dir.path().join("queue.redb"),
            max_bytes: 1 << 20,
        };
        let intake =
            overflow::start(&queue, &telemetry, &cancel, &to_batch, &mut tasks).expect("queue");
        let sink = Sink {
            intake,
            telemetry: telemetry.clone(),
            name: "eve".into(),
        };
        let cfg = FollowConfig {
            name: "eve".into(),
            path: path.clone(),
            format: FollowFormat::SuricataEve,
            from_start: true,
            poll_interval: Duration::from_millis(10),
            max_line_bytes: 64 * 1024,
        };
        let follower = tokio::spawn(follow(cfg, sink, cancel.clone()));
        let (t, r) = (&telemetry.alerts, &telemetry.alerts_rejected);

        // The cut second line is held, neither parsed nor refused.
        until("the first alert", || count(t) == 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!((count(t), count(r)), (1, 0), "held while being written");
        // Its writer finishes it: one whole alert.
        append(&path, format!("{}\n", &second[40..]).as_bytes());
        until("the completed second alert", || count(t) == 2).await;
        assert_eq!(count(r), 0);

        // Rotated while a line is cut: that line is refused, the new file
        // read from its start.
        append(&path, &eve_line(3).as_bytes()[..50]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!((count(t), count(r)), (2, 0), "held");
        let next = dir.path().join("eve.json.new");
        std::fs::write(&next, format!("{}\n", eve_line(4))).expect("write");
        std::fs::rename(&next, &path).expect("rotate");
        until("the rotated file's alert", || {
            count(t) == 3 && count(r) == 1
        })
        .await;

        // Stopped while a line is cut: refused too.
        append(&path, &eve_line(5).as_bytes()[..30]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!((count(t), count(r)), (3, 1), "held");
        cancel.cancel();
        follower.await.expect("joins").expect("follow ends cleanly");
        assert_eq!((count(t), count(r)), (3, 2));
    }
}
