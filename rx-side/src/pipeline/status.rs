//! The link status: what heartbeats and the pipeline say, published
//! retained; changes of the link's state also go to the audit topic.
//!
//! ```text
//!  heartbeats ──> LinkState (sender uptime, counters, last block sent per lane, clock skew)
//!  decode     ──> LinkState (last block delivered per lane, FEC headroom meters)
//!  every 2 s ──> retained status (publish, outside the outbox)
//!  link up ⇄ down ──> audit event (outbox)
//! ```
//!
//! The link is up while heartbeats arrive within `link.link_timeout`. A
//! block sent (per the sender's heartbeat) but not delivered here is what
//! `lag_blocks` shows; the reassembler turns a lasting lag into a gap.
//! `fec` is the receiver's own measure of the link, per lane: how much of
//! its repair budget each block needed (`weir_shared::headroom`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use weir_shared::contract::rfc3339_ns;
use weir_shared::lane::Lane;

use super::outbox::Item;
use super::publish::Topics;
use super::{LinkState, Message, StageError, now, send_event, unix_ns};
use crate::stats::RxStats;

/// How often the retained status is published.
const EVERY: Duration = Duration::from_secs(2);

/// Blocks of `lane` the last heartbeat says were sent and that are not
/// resolved yet: neither delivered nor written down as lost (0 before any
/// heartbeat). Lost blocks below the last one delivered count until their
/// gap entry is out, so a lag never hides a loss still to be reported.
pub(crate) fn lag_blocks(link: &LinkState, lane: Lane) -> u64 {
    let Some((_, session, hb)) = &link.last else {
        return 0;
    };
    let behind = match (hb.last_sent[lane.index()], link.delivered(*session, lane)) {
        (Some(s), Some(g)) => s.saturating_sub(g),
        (Some(s), None) => s.saturating_add(1),
        (None, _) => 0,
    };
    behind.max(link.unresolved(*session, lane))
}

/// Whether a heartbeat arrived within `link_timeout` of `t`.
pub(crate) fn link_up(link: &LinkState, link_timeout: Duration, t: std::time::Instant) -> bool {
    link.last
        .as_ref()
        .is_some_and(|(at, ..)| t.duration_since(*at) < link_timeout)
}

/// The status body at `t`, and whether the link is up.
fn body(
    link: &LinkState,
    link_timeout: Duration,
    stats: &RxStats,
    t: std::time::Instant,
) -> (serde_json::Value, bool) {
    let sender = link.last.as_ref().map(|(at, session, hb)| {
        let per_lane = |f: &dyn Fn(Lane) -> serde_json::Value| {
            serde_json::json!({"alert": f(Lane::Alert), "bulk": f(Lane::Bulk)})
        };
        serde_json::json!({
            "session": session.short_hex(),
            "heartbeat_age_ms": t.duration_since(*at).as_millis() as u64,
            "uptime_ms": hb.uptime_ms,
            "last_block_sent": per_lane(&|l| serde_json::json!(hb.last_sent[l.index()])),
            "last_block_delivered": per_lane(&|l| serde_json::json!(link.delivered(*session, l))),
            "lag_blocks": per_lane(&|l| serde_json::json!(lag_blocks(link, l))),
            "counters": hb.counters,
            "spool_depth": hb.spool_depth,
            "config_fingerprint": format!("{:016x}", u64::from_be_bytes(hb.config_fingerprint)),
            "clock_skew_ms": link.skew_ms,
        })
    });
    let link_up = link_up(link, link_timeout, t);
    let body = serde_json::json!({
        "online": true,
        "ts": rfc3339_ns(unix_ns()),
        "link_up": link_up,
        "sender": sender,
        "fec": link.headroom.to_json(),
        "counters": stats.snapshot(),
    });
    (body, link_up)
}

/// Publish the retained link status every two seconds until cancelled.
pub async fn run(
    topics: Topics,
    link_timeout: Duration,
    stats: Arc<RxStats>,
    link: Arc<Mutex<LinkState>>,
    cancel: CancellationToken,
    to_publish: Sender<Vec<Message>>,
    to_outbox: Sender<Item>,
) -> Result<(), StageError> {
    let mut tick = tokio::time::interval(EVERY);
    let mut was_up: Option<bool> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let state = link.lock().map(|l| l.clone()).unwrap_or_default();
        let (body, up) = body(&state, link_timeout, &stats, now());
        if was_up.is_some_and(|w| w != up) || (was_up.is_none() && up) {
            let kind = if up { "link_up" } else { "link_down" };
            tracing::warn!(link = kind, "Link state changed.");
            let ev = serde_json::json!({"type": kind, "ts": rfc3339_ns(unix_ns()), "sender": body["sender"]});
            send_event(&to_outbox, Message::event(&topics.audit, &ev));
        }
        was_up = Some(up);
        let msg = Message {
            topic: topics.status.clone(),
            payload: body.to_string().into_bytes(),
            retain: true,
        };
        if to_publish.try_send(vec![msg]).is_err() {
            tracing::debug!("Status skipped: publish queue full.");
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_shared::heartbeat::Heartbeat;
    use weir_shared::wire::SessionId;

    use super::*;

    #[test]
    fn lag_and_link_state_follow_heartbeats_and_deliveries() {
        let t = std::time::Instant::now();
        let s = SessionId([5; 16]);
        let hb = Heartbeat {
            sent_unix_ms: 0,
            uptime_ms: 1000,
            last_sent: [Some(3), Some(10)],
            counters: weir_shared::heartbeat::TxCounters::default(),
            spool_depth: 0,
            config_fingerprint: [0; 8],
            marks: Default::default(),
            fec: Default::default(),
            recent: Vec::new(),
            previous: Vec::new(),
            health: None,
        };
        let mut link = LinkState {
            last: Some((t, s, hb)),
            ..LinkState::default()
        };
        link.record_delivered(s, Lane::Bulk, 7);
        let stats = RxStats::default();
        let (b, up) = body(
            &link,
            Duration::from_secs(3),
            &stats,
            t + Duration::from_secs(1),
        );
        assert!(up);
        assert_eq!(b["sender"]["lag_blocks"]["bulk"], 3);
        assert_eq!(b["sender"]["lag_blocks"]["alert"], 4);
        assert_eq!(b["sender"]["last_block_delivered"]["bulk"], 7);
        assert_eq!(b["fec"]["bulk"]["blocks"], 0, "no block measured yet");
        assert_eq!(b["fec"]["alert"]["pattern"], "none");
        let (_, up) = body(
            &link,
            Duration::from_secs(3),
            &stats,
            t + Duration::from_secs(4),
        );
        assert!(!up, "no heartbeat for longer than the timeout");
    }
}
