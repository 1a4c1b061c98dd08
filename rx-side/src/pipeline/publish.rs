//! Stage 6, `publish`: MQTT at QoS 1, counted only when the broker acks.
//!
//! ```text
//!  Vec<Message> ──publish_tracked──> broker ──PUBACK──> acked
//!                      ^                     └─ session reset / disconnect ─┐
//!                      └──────────────── republished (same payload, same id) ┘
//!  status ticker ──(retained, last-will "offline")──> diode/v1/{site}/{gw}/status
//! ```
//!
//! A message is delivered only when its PUBACK arrives; one the client
//! reports lost (a broker restart without persistence resets the session)
//! is published again with the same record id, so consumers de-duplicate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, PublishNotice, PublishOptions,
    QoS,
};
use tokio::sync::mpsc::{self, Receiver, Sender, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_shared::config::MqttConfig;
use weir_shared::contract::rfc3339_ns;

use super::{LinkState, Message, StageError, now};
use crate::stats::{RxStats, add};

/// The topics of one receiver.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Template for point topics.
    pub point_template: String,
    /// Site name.
    pub site: String,
    /// Retained link status.
    pub status: String,
    /// Gap (loss) events.
    pub gaps: String,
    /// Prefix of alert topics (`…/alerts/{source}`).
    pub alerts: String,
}

impl Topics {
    /// Topics from the `[mqtt]` config.
    pub fn new(m: &MqttConfig) -> Self {
        let base = format!("diode/v1/{}/{}", m.site, m.gateway);
        Self {
            point_template: m.point_topic.clone(),
            site: m.site.clone(),
            status: format!("{base}/status"),
            gaps: format!("{base}/gaps"),
            alerts: format!("{base}/alerts"),
        }
    }
}

/// How long a shutdown waits for outstanding acknowledgements.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

fn offline_payload() -> Vec<u8> {
    serde_json::json!({"online": false})
        .to_string()
        .into_bytes()
}

/// Client options from the `[mqtt]` config, with the retained "offline"
/// status as last will.
fn mqtt_options(cfg: &MqttConfig, topics: &Topics) -> MqttOptions {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), (cfg.host.as_str(), cfg.port));
    opts.set_keep_alive(
        u16::try_from(cfg.keep_alive.as_secs())
            .unwrap_or(u16::MAX)
            .max(1),
    );
    opts.set_inflight(cfg.inflight);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_last_will(LastWill::new(
        topics.status.clone(),
        offline_payload(),
        QoS::AtLeastOnce,
        true,
    ));
    opts
}

/// The event loop drives the connection; it reconnects with backoff.
fn spawn_connection(mut eventloop: EventLoop) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!("Connected to the MQTT broker.");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection error.");
                    let jitter =
                        Duration::from_millis(u64::from(now().elapsed().subsec_millis() % 100));
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}

/// Notices are awaited in order by a second task; a message whose publish
/// was not acknowledged goes back through `retry_tx`.
fn spawn_acker(
    mut notice_rx: Receiver<(PublishNotice, Message)>,
    retry_tx: UnboundedSender<Message>,
    ack_stats: Arc<RxStats>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((notice, msg)) = notice_rx.recv().await {
            match notice.wait_async().await {
                Ok(_) => add(&ack_stats.acked, 1),
                Err(e) => {
                    tracing::debug!(error = %e, "Publish not acknowledged; publishing again.");
                    add(&ack_stats.republished, 1);
                    if retry_tx.send(msg).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Run until the message channel closes and every message was acked.
pub async fn run(
    cfg: MqttConfig,
    topics: Topics,
    stats: Arc<RxStats>,
    mut from_alert_lane: Receiver<Vec<Message>>,
    mut from_validate: Receiver<Vec<Message>>,
) -> Result<(), StageError> {
    let (client, eventloop) = AsyncClient::builder(mqtt_options(&cfg, &topics))
        .capacity(usize::from(cfg.inflight))
        .build();
    let connection = spawn_connection(eventloop);

    let (notice_tx, notice_rx) =
        mpsc::channel::<(PublishNotice, Message)>(usize::from(cfg.inflight) * 2);
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Message>();
    let acker = spawn_acker(notice_rx, retry_tx, stats.clone());

    // Alert-lane messages overtake the bulk backlog: an alarm must not wait
    // behind thousands of historian points on their way to the broker.
    let mut urgent: VecDeque<Message> = VecDeque::new();
    let mut queue: VecDeque<Message> = VecDeque::new();
    let mut input_open = true;
    let mut alerts_open = true;
    let mut closed_at = None;
    loop {
        while alerts_open {
            match from_alert_lane.try_recv() {
                Ok(b) => urgent.extend(b),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => alerts_open = false,
            }
        }
        if queue.is_empty() && urgent.is_empty() {
            let published = stats.published.load(std::sync::atomic::Ordering::Relaxed);
            let done = stats.acked.load(std::sync::atomic::Ordering::Relaxed);
            if !input_open && !alerts_open && done >= published {
                break;
            }
            if closed_at.is_some_and(|t: std::time::Instant| t.elapsed() > DRAIN_LIMIT) {
                tracing::error!(
                    unacknowledged = published - done,
                    "Stopping with messages the broker never acknowledged."
                );
                break;
            }
            tokio::select! {
                biased;
                m = retry_rx.recv() => if let Some(m) = m { queue.push_back(m) },
                batch = from_alert_lane.recv(), if alerts_open => if let Some(b) = batch {
                    urgent.extend(b);
                } else {
                    alerts_open = false;
                },
                batch = from_validate.recv(), if input_open => if let Some(b) = batch {
                    queue.extend(b);
                } else {
                    input_open = false;
                    closed_at = Some(now());
                },
                () = tokio::time::sleep(Duration::from_millis(50)), if !input_open => {}
            }
            continue;
        }
        while let Ok(m) = retry_rx.try_recv() {
            queue.push_front(m);
        }
        let Some(msg) = urgent.pop_front().or_else(|| queue.pop_front()) else {
            continue;
        };
        let opts = PublishOptions::new(QoS::AtLeastOnce).retain(msg.retain);
        match client
            .publish_tracked(msg.topic.clone(), msg.payload.clone(), opts)
            .await
        {
            Ok(notice) => {
                add(&stats.published, 1);
                if notice_tx.send((notice, msg)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT client refused a publish; retrying.");
                queue.push_front(msg);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Clean shutdown: say offline ourselves (the broker drops the will on
    // a clean disconnect), then disconnect.
    let _ = client
        .publish_tracked(
            topics.status.clone(),
            offline_payload(),
            PublishOptions::new(QoS::AtLeastOnce).retain(true),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = client.disconnect().await;
    drop(notice_tx);
    let _ = acker.await;
    connection.abort();
    Ok(())
}

/// Publish the retained link status every two seconds until cancelled.
pub async fn status(
    topics: Topics,
    link_timeout: Duration,
    stats: Arc<RxStats>,
    link: Arc<Mutex<LinkState>>,
    cancel: CancellationToken,
    to_publish: Sender<Vec<Message>>,
) -> Result<(), StageError> {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let t = now();
        let link = link.lock().map(|l| l.clone()).unwrap_or_default();
        let sender = link.last.as_ref().map(|(at, session, hb)| {
            serde_json::json!({
                "session": session.short_hex(),
                "heartbeat_age_ms": t.duration_since(*at).as_millis() as u64,
                "uptime_ms": hb.uptime_ms,
                "last_block_sent": {"alert": hb.last_sent[0], "bulk": hb.last_sent[1]},
                "counters": hb.counters,
                "spool_depth": hb.spool_depth,
                "clock_skew_ms": link.skew_ms,
            })
        });
        let link_up = link
            .last
            .as_ref()
            .is_some_and(|(at, ..)| t.duration_since(*at) < link_timeout);
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let body = serde_json::json!({
            "online": true,
            "ts": rfc3339_ns(unix_ns),
            "link_up": link_up,
            "sender": sender,
            "counters": stats.snapshot(),
        });
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
