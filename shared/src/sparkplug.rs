//! Sparkplug B 3.0 edge node, sans-IO.
//!
//! The receiver can republish historian points as a Sparkplug B edge node
//! instead of (or beside) the JSON UNS topics. Sparkplug is stateful: a host
//! only understands a `DDATA` whose aliases it learned from a `DBIRTH`, every
//! message after `NBIRTH` carries the next `seq` (0–255, wrapping), and the
//! `bdSeq` in `NBIRTH` must match the will (`NDEATH`) registered with the MQTT
//! CONNECT. All of that is decided here, without a socket or a clock: the
//! shell passes `now_ms` (Unix milliseconds) and publishes the [`Message`]s it
//! gets back, in order.
//!
//! ```text
//!             birth() / host ONLINE            points() ─► [DBIRTH…] DDATA…
//!  Disconnected ──────────────► Publishing ◄── NCMD Rebirth ─► NBIRTH DBIRTH…
//!      ▲    │ birth() while the       │  ▲
//!      │    │ primary host is offline │  │ host ONLINE ─► NBIRTH DBIRTH…
//!      │    ▼                         ▼  │
//!      │  AwaitingHost ◄──── host OFFLINE
//!      └── disconnected() (from any state; bdSeq += 1 for the next CONNECT)
//! ```
//!
//! Choices (see FORMATS.md §4):
//! - **Devices** are source systems (`pi`, `aveva`, …); **metric names** are
//!   the tag with `/` and `\` as folder separators and every other character
//!   outside letters, digits, `_`, `-` and space replaced by `_`
//!   ([`metric_name`]). The raw tag travels as the `Tag` property in births.
//! - **Datatypes**: `F64` → Double, `I64` → Int64, `U64` → UInt64, `Bool` →
//!   Boolean, `Str` → String. A process digital state is a **String** (its
//!   name) with an Int32 `StateCode` property, because hosts show names and the
//!   code stays available. A SYSTEM digital state (PI `I/O Timeout` on a float
//!   tag) is not a process value: it is sent as `is_null` on the tag's own
//!   datatype with `State`/`StateCode` properties, so it never forces a rebirth.
//!   A metric first seen as null or a system state is born as Double.
//!   Integers widen into a Double metric (up to 2^53) and between Int64 and
//!   UInt64 when in range; any other type change re-publishes the device's
//!   `DBIRTH` with the new datatype before the value.
//! - **Quality**: property `Quality` (Int32) only when not Good: Uncertain →
//!   500, Bad → 0 ([`quality`]), beside the canonical `StatusCode` (UInt32)
//!   and the source's own quality as text (`native_quality`).
//! - **Precision**: Sparkplug timestamps are milliseconds; with
//!   `native_properties` every data metric also carries `ts_ns` (Int64) and
//!   the record's `record_seq` (UInt64).
//! - **bdSeq** belongs to the MQTT session, not to the birth: a rebirth (NCMD
//!   or the primary host coming back) re-sends `NBIRTH` with the same bdSeq,
//!   because the will registered at CONNECT still carries it. Only
//!   [`SparkplugNode::disconnected`] advances it (mod 256), for the next
//!   CONNECT.
//! - **Commands never cross the diode**: `Node Control/Rebirth = true` is
//!   answered from the local cache; every other NCMD and every DCMD is
//!   [`Refusal`]-ed for the shell to log.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use srad_types::payload::{
    DataType, Message as ProtoMessage, Metric, Payload, PropertySet, PropertyValue, metric,
    property_value,
};

use crate::config::ConfigError;
use crate::record::{NativeQuality, Point, SourceSystem, Value};

/// Topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// Name of the birth/death sequence metric.
pub const BD_SEQ: &str = "bdSeq";
/// Name of the rebirth control metric.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// Health metric: the diode link is up (heartbeats arrive).
pub const LINK_UP: &str = "Diode/LinkUp";
/// Health metric: last stream sequence number received.
pub const LAST_SEQ: &str = "Diode/LastSeq";
/// Health metric: gaps (lost records) seen so far.
pub const GAP_COUNT: &str = "Diode/GapCount";
/// Property carrying the Sparkplug quality when it is not Good.
pub const QUALITY: &str = "Quality";
/// Sparkplug quality of an Uncertain point (Ignition "STALE").
pub const QUALITY_UNCERTAIN: i32 = 500;
/// Sparkplug quality of a Bad point.
pub const QUALITY_BAD: i32 = 0;
/// Sparkplug quality of a Good point (never sent: absence means Good).
pub const QUALITY_GOOD: i32 = 192;
/// First alias handed to a device metric; 1–15 belong to node metrics.
pub const FIRST_DEVICE_ALIAS: u64 = 16;

const ALIAS_BD_SEQ: u64 = 1;
const ALIAS_REBIRTH: u64 = 2;
const ALIAS_LINK_UP: u64 = 3;
const ALIAS_LAST_SEQ: u64 = 4;
const ALIAS_GAP_COUNT: u64 = 5;

/// Topic prefix of Sparkplug 3.0 host STATE messages.
const STATE_PREFIX: &str = "spBv1.0/STATE/";
/// Topic prefix of legacy (Sparkplug 2.2) host STATE messages.
const LEGACY_STATE_PREFIX: &str = "STATE/";

/// Largest integer a Double holds exactly.
const F64_EXACT: u64 = 1 << 53;

// ---------------------------------------------------------------- config

/// `[sparkplug]` settings of the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// Sparkplug group id (the site).
    pub group_id: String,
    /// Edge node id (the gateway).
    pub edge_node_id: String,
    /// Primary host application id. When set, births wait until its STATE
    /// says online, and are re-sent each time it comes back.
    #[serde(default)]
    pub primary_host_id: Option<String>,
    /// Most devices (source systems); points of further ones are dropped
    /// and counted.
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
    /// Most metrics (tags) per device; points of further tags are dropped
    /// and counted.
    #[serde(default = "default_max_metrics_per_device")]
    pub max_metrics_per_device: usize,
    /// Most metrics in one DDATA; a longer run is split.
    #[serde(default = "default_max_metrics_per_message")]
    pub max_metrics_per_message: usize,
    /// QoS of NDATA/DDATA. Sparkplug says 0; 1 is a non-conformant opt-in
    /// for brokers and hosts that accept it, so the outbox can count on
    /// PUBACK.
    #[serde(default)]
    pub data_qos: u8,
    /// Add `ts_ns` and `record_seq` properties to every data metric.
    #[serde(default = "default_true")]
    pub native_properties: bool,
    /// Largest NCMD/DCMD/STATE payload decoded; larger ones are refused.
    #[serde(default = "default_max_inbound_bytes")]
    pub max_inbound_bytes: usize,
}

fn default_max_devices() -> usize {
    16
}
fn default_max_metrics_per_device() -> usize {
    10_000
}
fn default_max_metrics_per_message() -> usize {
    500
}
fn default_true() -> bool {
    true
}
fn default_max_inbound_bytes() -> usize {
    64 * 1024
}

impl SparkplugConfig {
    /// Settings with defaults for everything but the two ids.
    pub fn new(group_id: impl Into<String>, edge_node_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            edge_node_id: edge_node_id.into(),
            primary_host_id: None,
            max_devices: default_max_devices(),
            max_metrics_per_device: default_max_metrics_per_device(),
            max_metrics_per_message: default_max_metrics_per_message(),
            data_qos: 0,
            native_properties: true,
            max_inbound_bytes: default_max_inbound_bytes(),
        }
    }

    /// Check every key; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_id("sparkplug.group_id", &self.group_id)?;
        check_id("sparkplug.edge_node_id", &self.edge_node_id)?;
        if let Some(host) = &self.primary_host_id {
            check_id("sparkplug.primary_host_id", host)?;
        }
        if self.max_devices == 0 {
            return Err(bad("sparkplug.max_devices", "must be at least 1"));
        }
        if self.max_metrics_per_device == 0 {
            return Err(bad(
                "sparkplug.max_metrics_per_device",
                "must be at least 1",
            ));
        }
        if self.max_metrics_per_message == 0 {
            return Err(bad(
                "sparkplug.max_metrics_per_message",
                "must be at least 1",
            ));
        }
        if self.data_qos > 1 {
            return Err(bad("sparkplug.data_qos", "must be 0 or 1"));
        }
        if self.max_inbound_bytes < 64 {
            return Err(bad("sparkplug.max_inbound_bytes", "must be at least 64"));
        }
        Ok(())
    }
}

fn bad(key: &'static str, reason: &'static str) -> ConfigError {
    ConfigError { key, reason }
}

/// Sparkplug ids are single topic levels: non-empty, no `+ / #`, no
/// control characters.
fn check_id(key: &'static str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(bad(key, "must not be empty"));
    }
    if id.contains(['+', '/', '#']) {
        return Err(bad(key, "must not contain `+`, `/` or `#`"));
    }
    if id.chars().any(char::is_control) {
        return Err(bad(key, "must not contain control characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------- outputs

/// Which Sparkplug message a [`Message`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Edge node birth certificate.
    NBirth,
    /// Edge node death certificate (the will).
    NDeath,
    /// Device birth certificate.
    DBirth,
    /// Edge node data (health metrics).
    NData,
    /// Device data (points).
    DData,
}

impl MessageKind {
    /// The topic verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NBirth => "NBIRTH",
            Self::NDeath => "NDEATH",
            Self::DBirth => "DBIRTH",
            Self::NData => "NDATA",
            Self::DData => "DDATA",
        }
    }
}

/// One MQTT publish for the shell to make, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What it is.
    pub kind: MessageKind,
    /// Full topic.
    pub topic: String,
    /// Encoded Sparkplug B payload (protobuf).
    pub payload: Vec<u8>,
    /// MQTT QoS (0 or 1).
    pub qos: u8,
    /// MQTT retain flag (always false for Sparkplug edge messages).
    pub retain: bool,
}

/// What [`SparkplugNode::points`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Births (when needed) then data, to publish in order.
    pub messages: Vec<Message>,
    /// Points dropped because `max_devices` devices already exist.
    pub dropped_device_limit: usize,
    /// Points dropped because their device already has
    /// `max_metrics_per_device` metrics.
    pub dropped_metric_limit: usize,
}

/// How [`SparkplugNode::points`] marks data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live data: `is_historical` only where the point says so.
    Live,
    /// Backfill or replay: every metric is `is_historical`.
    Backfill,
}

/// Where the node is in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No MQTT session (before the first `birth`, after `disconnected`).
    Disconnected,
    /// Connected, but the primary host is not online: nothing is published.
    AwaitingHost,
    /// Births are out; data may flow.
    Publishing,
}

/// Diode health shown as node metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiodeHealth {
    /// Heartbeats arrive.
    pub link_up: bool,
    /// Last stream sequence number received.
    pub last_seq: u64,
    /// Gaps seen so far.
    pub gap_count: u64,
}

/// Why a command was not carried out. The shell logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The topic is not this node's NCMD or DCMD.
    #[error("not a command topic of this edge node")]
    NotForThisNode,
    /// Device commands never cross the diode.
    #[error("device commands (DCMD) are not accepted: commands never cross the diode")]
    DeviceCommand,
    /// The payload is larger than `max_inbound_bytes`.
    #[error("command payload of {0} bytes above the limit")]
    TooLarge(usize),
    /// The payload is not a Sparkplug B protobuf.
    #[error("command payload does not decode")]
    Malformed,
    /// A write to some metric other than `Node Control/Rebirth`.
    #[error("only `Node Control/Rebirth` is accepted: commands never cross the diode")]
    NotRebirth,
    /// `Node Control/Rebirth` without the value `true`.
    #[error("rebirth request without the boolean value true")]
    RebirthNotTrue,
    /// A rebirth was asked while nothing may be published.
    #[error("rebirth requested while not publishing")]
    NotPublishing,
}

/// Answer to an NCMD/DCMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// A rebirth, answered locally: publish these (NBIRTH, DBIRTHs).
    Rebirth(Vec<Message>),
    /// Not carried out.
    Refused(Refusal),
}

/// Why a STATE message changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostIgnored {
    /// No primary host is configured.
    #[error("no primary host configured")]
    NoPrimaryHost,
    /// Not a STATE topic.
    #[error("not a STATE topic")]
    NotState,
    /// STATE of another host.
    #[error("STATE of a host other than the primary")]
    OtherHost,
    /// Payload is not `{online,timestamp}` JSON (or `ONLINE`/`OFFLINE`).
    #[error("STATE payload malformed")]
    Malformed,
    /// Older than the last STATE seen.
    #[error("STATE older than the last one seen")]
    Stale,
    /// ONLINE again, with nothing new.
    #[error("STATE repeats the current one")]
    Duplicate,
}

/// Answer to a primary-host STATE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// The primary host is online. Publish these births (empty while
    /// disconnected: `birth` will send them).
    Online(Vec<Message>),
    /// The primary host went offline; the node stops publishing until it
    /// is back. Sparkplug 3.0 asks the edge node to publish its death
    /// ([`SparkplugNode::will`]), DISCONNECT, and find a server where the
    /// host is online; with a single broker the shell may instead stay
    /// connected and wait for [`HostOutcome::Online`].
    Offline,
    /// Nothing changed.
    Ignored(HostIgnored),
}

/// Any inbound message, routed by [`SparkplugNode::handle_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// It was on a command topic.
    Command(CommandOutcome),
    /// It was on a STATE topic.
    Host(HostOutcome),
}

/// Why the node cannot take points now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SparkplugError {
    /// No session, or the primary host is offline: keep the points (the
    /// node's state did not change) and offer them again once publishing.
    #[error("Sparkplug node not publishing (no session, or primary host offline)")]
    NotPublishing,
}

/// Counters since the node was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SparkplugStats {
    /// NBIRTH sequences sent (connect, rebirth, host back).
    pub births: u64,
    /// DBIRTHs sent by `points` (new device, new metric, changed datatype).
    pub device_births: u64,
    /// Rebirth requests answered.
    pub rebirth_requests: u64,
    /// Commands refused.
    pub refused_commands: u64,
    /// Points put in DDATA or births.
    pub points: u64,
    /// Points dropped at the device limit.
    pub dropped_device_limit: u64,
    /// Points dropped at the metric limit.
    pub dropped_metric_limit: u64,
}

// ---------------------------------------------------------------- state

/// The last sample of a metric, kept for births. Strings are reused with
/// `clone_from`, so updating it does not allocate in the steady state.
#[derive(Debug, Clone)]
struct Sample {
    ts_ns: i64,
    status: u32,
    record_seq: u64,
    historical: bool,
    value: Value,
    native: NativeQuality,
}

impl Sample {
    fn of(p: &Point, historical: bool) -> Self {
        Self {
            ts_ns: p.ts_ns,
            status: p.status,
            record_seq: p.seq,
            historical,
            value: p.value.clone(),
            native: p.native_quality.clone(),
        }
    }

    fn update(&mut self, p: &Point, historical: bool) {
        self.ts_ns = p.ts_ns;
        self.status = p.status;
        self.record_seq = p.seq;
        self.historical = historical;
        self.value.clone_from(&p.value);
        self.native.clone_from(&p.native_quality);
    }

    fn view(&self) -> SampleRef<'_> {
        SampleRef {
            ts_ns: self.ts_ns,
            status: self.status,
            record_seq: self.record_seq,
            historical: self.historical,
            value: &self.value,
            native: &self.native,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SampleRef<'a> {
    ts_ns: i64,
    status: u32,
    record_seq: u64,
    historical: bool,
    value: &'a Value,
    native: &'a NativeQuality,
}

impl<'a> SampleRef<'a> {
    fn of(p: &'a Point, historical: bool) -> Self {
        Self {
            ts_ns: p.ts_ns,
            status: p.status,
            record_seq: p.seq,
            historical,
            value: &p.value,
            native: &p.native_quality,
        }
    }
}

#[derive(Debug)]
struct MetricState {
    tag: String,
    name: String,
    alias: u64,
    datatype: DataType,
    unit: Option<String>,
    last: Sample,
}

#[derive(Debug)]
struct Device {
    system: SourceSystem,
    dbirth: String,
    ddata: String,
    metrics: Vec<MetricState>,
    by_tag: HashMap<String, usize>,
    names: HashSet<String>,
}

/// DDATA metrics waiting per device (devices in order of first appearance).
#[derive(Default)]
struct Pending(Vec<(usize, Vec<Metric>)>);

impl Pending {
    fn buf(&mut self, device: usize) -> &mut Vec<Metric> {
        let k = if let Some(k) = self.0.iter().position(|(d, _)| *d == device) {
            k
        } else {
            self.0.push((device, Vec::new()));
            self.0.len() - 1
        };
        &mut self.0[k].1
    }
}

#[derive(Debug)]
struct NodeTopics {
    nbirth: String,
    ndata: String,
    ndeath: String,
    ncmd: String,
    /// `spBv1.0/{group}/DCMD/{edge}/`.
    dcmd_prefix: String,
}

#[derive(Debug, Default)]
struct HostView {
    online: bool,
    /// Timestamp of the last Sparkplug 3.0 STATE accepted.
    ts: Option<u64>,
}

/// A Sparkplug B edge node: turns points into births and data, answers
/// rebirth requests and follows the primary host. Deterministic: same calls,
/// same bytes.
#[derive(Debug)]
pub struct SparkplugNode {
    cfg: SparkplugConfig,
    topics: NodeTopics,
    bd_seq: u64,
    next_seq: u8,
    session: SessionState,
    host: HostView,
    health: DiodeHealth,
    devices: Vec<Device>,
    next_alias: u64,
    stats: SparkplugStats,
}

impl SparkplugNode {
    /// A node whose first CONNECT will carry `bd_seq` (0–255) in its will.
    /// The shell persists [`bd_seq`](Self::bd_seq) so a restart continues
    /// the sequence.
    pub fn new(cfg: SparkplugConfig, bd_seq: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if bd_seq > 255 {
            return Err(bad("sparkplug.bd_seq", "must be 0..=255"));
        }
        let base = format!("{NAMESPACE}/{}", cfg.group_id);
        let edge = &cfg.edge_node_id;
        let topics = NodeTopics {
            nbirth: format!("{base}/NBIRTH/{edge}"),
            ndata: format!("{base}/NDATA/{edge}"),
            ndeath: format!("{base}/NDEATH/{edge}"),
            ncmd: format!("{base}/NCMD/{edge}"),
            dcmd_prefix: format!("{base}/DCMD/{edge}/"),
        };
        Ok(Self {
            cfg,
            topics,
            bd_seq,
            next_seq: 0,
            session: SessionState::Disconnected,
            host: HostView::default(),
            health: DiodeHealth::default(),
            devices: Vec::new(),
            next_alias: FIRST_DEVICE_ALIAS,
            stats: SparkplugStats::default(),
        })
    }

    /// The bdSeq of the current (or next) MQTT session.
    pub fn bd_seq(&self) -> u64 {
        self.bd_seq
    }

    /// Where the node is in its session.
    pub fn session(&self) -> SessionState {
        self.session
    }

    /// Counters since creation.
    pub fn stats(&self) -> SparkplugStats {
        self.stats
    }

    /// Topics to subscribe to right after CONNACK, before [`birth`](Self::birth):
    /// this node's NCMD, its DCMDs, and the primary host's STATE (3.0 and
    /// legacy).
    pub fn subscriptions(&self) -> Vec<String> {
        let mut subs = vec![
            self.topics.ncmd.clone(),
            format!("{}+", self.topics.dcmd_prefix),
        ];
        if let Some(host) = &self.cfg.primary_host_id {
            subs.push(format!("{NAMESPACE}/STATE/{host}"));
            subs.push(format!("STATE/{host}"));
        }
        subs
    }

    /// The NDEATH to register as the will of the next CONNECT (QoS 1, not
    /// retained, only `bdSeq`). Publish it too before a clean DISCONNECT:
    /// the broker drops the will then.
    pub fn will(&self) -> Message {
        let bd_seq = Metric {
            name: Some(BD_SEQ.into()),
            datatype: Some(DataType::Int64 as u32),
            value: Some(metric::Value::LongValue(self.bd_seq)),
            ..Metric::default()
        };
        let payload = Payload {
            metrics: vec![bd_seq],
            ..Payload::default()
        };
        Message {
            kind: MessageKind::NDeath,
            topic: self.topics.ndeath.clone(),
            payload: payload.encode_to_vec(),
            qos: 1,
            retain: false,
        }
    }

    /// The MQTT session ended (or a CONNECT failed). Stops publishing,
    /// forgets the host's state (its retained STATE comes again on the next
    /// subscribe) and advances bdSeq: take a fresh [`will`](Self::will) for
    /// the next CONNECT.
    pub fn disconnected(&mut self) {
        self.session = SessionState::Disconnected;
        self.host = HostView::default();
        self.bd_seq = (self.bd_seq + 1) % 256;
    }

    /// The session is up (CONNACK, subscriptions made): NBIRTH (seq 0) then
    /// one DBIRTH per known device. Empty while a configured primary host is
    /// not known to be online; the births then come from
    /// [`host_state`](Self::host_state).
    pub fn birth(&mut self, now_ms: u64) -> Vec<Message> {
        if self.cfg.primary_host_id.is_some() && !self.host.online {
            self.session = SessionState::AwaitingHost;
            return Vec::new();
        }
        self.births(now_ms)
    }

    /// Update the health metrics. Returns an NDATA with the changed ones
    /// while publishing; otherwise the next NBIRTH carries them.
    pub fn set_health(&mut self, health: DiodeHealth, now_ms: u64) -> Option<Message> {
        let old = std::mem::replace(&mut self.health, health);
        if self.session != SessionState::Publishing || old == health {
            return None;
        }
        let mut metrics = Vec::new();
        if old.link_up != health.link_up {
            metrics.push(node_data(ALIAS_LINK_UP, now_ms, bool_value(health.link_up)));
        }
        if old.last_seq != health.last_seq {
            metrics.push(node_data(
                ALIAS_LAST_SEQ,
                now_ms,
                long_value(health.last_seq),
            ));
        }
        if old.gap_count != health.gap_count {
            metrics.push(node_data(
                ALIAS_GAP_COUNT,
                now_ms,
                long_value(health.gap_count),
            ));
        }
        let seq = self.take_seq();
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        };
        Some(Message {
            kind: MessageKind::NData,
            topic: self.topics.ndata.clone(),
            payload: payload.encode_to_vec(),
            qos: self.cfg.data_qos,
            retain: false,
        })
    }

    /// Publish points: a DBIRTH first for every device that gained a metric
    /// (one per device for the whole call), then DDATA per device, metrics
    /// by alias in input order. A point that declares a new metric travels
    /// in that DBIRTH, not again in DDATA. A point whose type does not fit
    /// its metric re-births the device with the new datatype.
    ///
    /// `Err(NotPublishing)` leaves the node unchanged: offer the points
    /// again once publishing.
    pub fn points<'a, I>(
        &mut self,
        points: I,
        mode: Mode,
        now_ms: u64,
    ) -> Result<Published, SparkplugError>
    where
        I: IntoIterator<Item = &'a Point>,
        I::IntoIter: Clone,
    {
        if self.session != SessionState::Publishing {
            return Err(SparkplugError::NotPublishing);
        }
        let iter = points.into_iter();
        let mut out = Published::default();
        let consumed = self.declare(iter.clone(), mode, now_ms, &mut out);
        self.data(iter, mode, now_ms, &consumed, &mut out);
        self.stats.dropped_device_limit += out.dropped_device_limit as u64;
        self.stats.dropped_metric_limit += out.dropped_metric_limit as u64;
        Ok(out)
    }

    /// Pass 1 of [`points`](Self::points): create the new devices and
    /// metrics, so each device is re-birthed once per call however many
    /// tags it gained, and emit those DBIRTHs. Returns the (ascending)
    /// indices of the points the births carry.
    fn declare<'a>(
        &mut self,
        points: impl Iterator<Item = &'a Point>,
        mode: Mode,
        now_ms: u64,
        out: &mut Published,
    ) -> Vec<usize> {
        let mut born: Vec<usize> = Vec::new();
        let mut consumed: Vec<usize> = Vec::new();
        // New metrics whose first point carried no type (null, SYSTEM
        // state): the first typed point of the call decides their datatype.
        let mut untyped: Vec<(usize, usize)> = Vec::new();
        for (i, p) in points.enumerate() {
            let Some(d) = self.device_or_create(p.source.system, &mut born) else {
                continue;
            };
            let dev = &mut self.devices[d];
            if let Some(&m) = dev.by_tag.get(p.tag.as_str()) {
                if let Some(k) = untyped.iter().position(|&x| x == (d, m))
                    && let Some(t) = value_type(&p.value)
                {
                    dev.metrics[m].datatype = t;
                    untyped.swap_remove(k);
                }
                continue;
            }
            if dev.metrics.len() >= self.cfg.max_metrics_per_device {
                continue;
            }
            let historical = p.flags.historical || mode == Mode::Backfill;
            let datatype = value_type(&p.value).unwrap_or_else(|| {
                untyped.push((d, dev.metrics.len()));
                DataType::Double
            });
            let name = unique_name(&mut dev.names, metric_name(&p.tag));
            dev.by_tag.insert(p.tag.clone(), dev.metrics.len());
            dev.metrics.push(MetricState {
                tag: p.tag.clone(),
                name,
                alias: self.next_alias,
                datatype,
                unit: p.unit.clone(),
                last: Sample::of(p, historical),
            });
            self.next_alias += 1;
            consumed.push(i);
            if !born.contains(&d) {
                born.push(d);
            }
        }
        for &d in &born {
            let msg = self.dbirth(d, now_ms);
            out.messages.push(msg);
            self.stats.device_births += 1;
        }
        self.stats.points += consumed.len() as u64;
        consumed
    }

    /// Pass 2 of [`points`](Self::points): DDATA, skipping the points
    /// births already carried.
    fn data<'a>(
        &mut self,
        points: impl Iterator<Item = &'a Point>,
        mode: Mode,
        now_ms: u64,
        consumed: &[usize],
        out: &mut Published,
    ) {
        let mut pending = Pending::default();
        let mut consumed = consumed.iter().copied().peekable();
        for (i, p) in points.enumerate() {
            if consumed.next_if_eq(&i).is_some() {
                continue;
            }
            let Some(d) = self.device(p.source.system) else {
                out.dropped_device_limit += 1;
                continue;
            };
            let Some(&m) = self.devices[d].by_tag.get(p.tag.as_str()) else {
                out.dropped_metric_limit += 1;
                continue;
            };
            let historical = p.flags.historical || mode == Mode::Backfill;
            let state = &mut self.devices[d].metrics[m];
            if let Some(encoded) = encode(state.datatype, &p.value) {
                let sample = SampleRef::of(p, historical);
                let metric = data_metric(state.alias, &sample, encoded, self.cfg.native_properties);
                state.last.update(p, historical);
                let buf = pending.buf(d);
                buf.push(metric);
                if buf.len() >= self.cfg.max_metrics_per_message {
                    let metrics = std::mem::take(buf);
                    out.messages.push(self.ddata(d, metrics, now_ms));
                }
            } else {
                // The value's type does not fit the metric: close the run of
                // data under the old definition, then re-birth the device
                // with the new datatype; the birth carries this point.
                if let Some(t) = value_type(&p.value) {
                    state.datatype = t;
                }
                state.last.update(p, historical);
                state.unit.clone_from(&p.unit);
                let metrics = std::mem::take(pending.buf(d));
                if !metrics.is_empty() {
                    out.messages.push(self.ddata(d, metrics, now_ms));
                }
                out.messages.push(self.dbirth(d, now_ms));
                self.stats.device_births += 1;
            }
            self.stats.points += 1;
        }
        for (d, metrics) in pending.0 {
            if !metrics.is_empty() {
                out.messages.push(self.ddata(d, metrics, now_ms));
            }
        }
    }

    /// An NCMD or DCMD arrived. Only `Node Control/Rebirth = true` on this
    /// node's NCMD is carried out, from the local cache (same bdSeq: the
    /// session's will is unchanged). The payload is untrusted: its size is
    /// checked before decoding, and decoding is checked.
    pub fn command(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> CommandOutcome {
        let outcome = match self.check_command(topic, payload) {
            Ok(()) => {
                self.stats.rebirth_requests += 1;
                CommandOutcome::Rebirth(self.births(now_ms))
            }
            Err(why) => CommandOutcome::Refused(why),
        };
        if matches!(outcome, CommandOutcome::Refused(_)) {
            self.stats.refused_commands += 1;
        }
        outcome
    }

    fn check_command(&self, topic: &str, payload: &[u8]) -> Result<(), Refusal> {
        if topic.starts_with(&self.topics.dcmd_prefix) {
            return Err(Refusal::DeviceCommand);
        }
        if topic != self.topics.ncmd {
            return Err(Refusal::NotForThisNode);
        }
        if payload.len() > self.cfg.max_inbound_bytes {
            return Err(Refusal::TooLarge(payload.len()));
        }
        let decoded = Payload::decode(payload).map_err(|_| Refusal::Malformed)?;
        if decoded.metrics.is_empty() {
            return Err(Refusal::NotRebirth);
        }
        for m in &decoded.metrics {
            let rebirth = match m.name.as_deref() {
                Some(name) => name == REBIRTH,
                None => m.alias == Some(ALIAS_REBIRTH),
            };
            if !rebirth {
                return Err(Refusal::NotRebirth);
            }
            if m.value != Some(metric::Value::BooleanValue(true)) {
                return Err(Refusal::RebirthNotTrue);
            }
        }
        if self.session != SessionState::Publishing {
            return Err(Refusal::NotPublishing);
        }
        Ok(())
    }

    /// A message on a primary-host STATE topic: `spBv1.0/STATE/{host}` with
    /// JSON `{"online":bool,"timestamp":ms}`, or legacy `STATE/{host}` with
    /// `ONLINE`/`OFFLINE`. A 3.0 STATE older than the last one is ignored.
    pub fn host_state(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> HostOutcome {
        match self.parse_state(topic, payload) {
            Ok((online, ts)) => self.apply_state(online, ts, now_ms),
            Err(why) => HostOutcome::Ignored(why),
        }
    }

    fn parse_state(&self, topic: &str, payload: &[u8]) -> Result<(bool, Option<u64>), HostIgnored> {
        #[derive(Deserialize)]
        struct StateJson {
            online: bool,
            timestamp: u64,
        }
        let host = self
            .cfg
            .primary_host_id
            .as_deref()
            .ok_or(HostIgnored::NoPrimaryHost)?;
        let (id, v3) = if let Some(id) = topic.strip_prefix(STATE_PREFIX) {
            (id, true)
        } else if let Some(id) = topic.strip_prefix(LEGACY_STATE_PREFIX) {
            (id, false)
        } else {
            return Err(HostIgnored::NotState);
        };
        if id != host {
            return Err(HostIgnored::OtherHost);
        }
        if payload.len() > self.cfg.max_inbound_bytes {
            return Err(HostIgnored::Malformed);
        }
        if v3 {
            let s: StateJson =
                serde_json::from_slice(payload).map_err(|_| HostIgnored::Malformed)?;
            if self.host.ts.is_some_and(|prev| s.timestamp < prev) {
                return Err(HostIgnored::Stale);
            }
            Ok((s.online, Some(s.timestamp)))
        } else {
            match payload.trim_ascii() {
                b"ONLINE" => Ok((true, None)),
                b"OFFLINE" => Ok((false, None)),
                _ => Err(HostIgnored::Malformed),
            }
        }
    }

    fn apply_state(&mut self, online: bool, ts: Option<u64>, now_ms: u64) -> HostOutcome {
        if online {
            // The same ONLINE again (retained copy, legacy repeat) must not
            // trigger another birth; a newer one means the host restarted
            // and lost what we told it.
            if self.host.online && (ts.is_none() || ts == self.host.ts) {
                return HostOutcome::Ignored(HostIgnored::Duplicate);
            }
            self.host.online = true;
            self.host.ts = ts.or(self.host.ts);
            if self.session == SessionState::Disconnected {
                return HostOutcome::Online(Vec::new());
            }
            HostOutcome::Online(self.births(now_ms))
        } else {
            self.host.online = false;
            self.host.ts = ts.or(self.host.ts);
            if self.session == SessionState::Publishing {
                self.session = SessionState::AwaitingHost;
            }
            HostOutcome::Offline
        }
    }

    /// Route any message received on a subscribed topic.
    pub fn handle_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Inbound {
        if topic.starts_with(STATE_PREFIX) || topic.starts_with(LEGACY_STATE_PREFIX) {
            Inbound::Host(self.host_state(topic, payload, now_ms))
        } else {
            Inbound::Command(self.command(topic, payload, now_ms))
        }
    }

    // ------------------------------------------------------------ internals

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        u64::from(s)
    }

    /// NBIRTH (seq 0, same bdSeq) then every DBIRTH, from the cache.
    fn births(&mut self, now_ms: u64) -> Vec<Message> {
        self.session = SessionState::Publishing;
        self.next_seq = 0;
        self.stats.births += 1;
        let mut out = Vec::with_capacity(1 + self.devices.len());
        out.push(self.nbirth(now_ms));
        for d in 0..self.devices.len() {
            out.push(self.dbirth(d, now_ms));
        }
        out
    }

    fn nbirth(&mut self, now_ms: u64) -> Message {
        let seq = self.take_seq();
        let h = self.health;
        let metrics = vec![
            node_birth(
                BD_SEQ,
                ALIAS_BD_SEQ,
                DataType::Int64,
                now_ms,
                long_value(self.bd_seq),
            ),
            node_birth(
                REBIRTH,
                ALIAS_REBIRTH,
                DataType::Boolean,
                now_ms,
                bool_value(false),
            ),
            node_birth(
                LINK_UP,
                ALIAS_LINK_UP,
                DataType::Boolean,
                now_ms,
                bool_value(h.link_up),
            ),
            node_birth(
                LAST_SEQ,
                ALIAS_LAST_SEQ,
                DataType::UInt64,
                now_ms,
                long_value(h.last_seq),
            ),
            node_birth(
                GAP_COUNT,
                ALIAS_GAP_COUNT,
                DataType::UInt64,
                now_ms,
                long_value(h.gap_count),
            ),
        ];
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        };
        Message {
            kind: MessageKind::NBirth,
            topic: self.topics.nbirth.clone(),
            payload: payload.encode_to_vec(),
            qos: 0,
            retain: false,
        }
    }

    fn dbirth(&mut self, d: usize, now_ms: u64) -> Message {
        let seq = self.take_seq();
        let native = self.cfg.native_properties;
        let dev = &self.devices[d];
        let metrics = dev
            .metrics
            .iter()
            .map(|m| birth_metric(m, native))
            .collect();
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        };
        Message {
            kind: MessageKind::DBirth,
            topic: dev.dbirth.clone(),
            payload: payload.encode_to_vec(),
            qos: 0,
            retain: false,
        }
    }

    fn ddata(&mut self, d: usize, metrics: Vec<Metric>, now_ms: u64) -> Message {
        let seq = self.take_seq();
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        };
        Message {
            kind: MessageKind::DData,
            topic: self.devices[d].ddata.clone(),
            payload: payload.encode_to_vec(),
            qos: self.cfg.data_qos,
            retain: false,
        }
    }

    fn device(&self, system: SourceSystem) -> Option<usize> {
        self.devices.iter().position(|d| d.system == system)
    }

    fn device_or_create(&mut self, system: SourceSystem, born: &mut Vec<usize>) -> Option<usize> {
        if let Some(d) = self.device(system) {
            return Some(d);
        }
        if self.devices.len() >= self.cfg.max_devices {
            return None;
        }
        let base = format!("{NAMESPACE}/{}", self.cfg.group_id);
        let edge = &self.cfg.edge_node_id;
        let id = system.as_str();
        self.devices.push(Device {
            system,
            dbirth: format!("{base}/DBIRTH/{edge}/{id}"),
            ddata: format!("{base}/DDATA/{edge}/{id}"),
            metrics: Vec::new(),
            by_tag: HashMap::new(),
            names: HashSet::new(),
        });
        let d = self.devices.len() - 1;
        born.push(d);
        Some(d)
    }
}

// ---------------------------------------------------------------- mapping

/// The Sparkplug metric name of a tag: `/` and `\` separate folders (empty
/// folders are dropped), letters, digits, `_`, `-` and spaces are kept, and
/// every other character (`.,@#$%+*:[]`…) becomes `_`.
/// `\\PISRV01\TT101.PV` → `PISRV01/TT101_PV`.
pub fn metric_name(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    for c in tag.chars() {
        if c == '/' || c == '\\' {
            if !out.is_empty() && !out.ends_with('/') {
                out.push('/');
            }
        } else if c.is_alphanumeric() || matches!(c, '_' | '-' | ' ') {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    while out.ends_with('/') {
        out.pop();
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Two tags can map to one name (`A.B`, `A_B`): the later one gets `_2`,
/// `_3`, … so names stay unique within the device.
fn unique_name(names: &mut HashSet<String>, name: String) -> String {
    let name = if names.contains(&name) {
        let mut n = 2u64;
        loop {
            let candidate = format!("{name}_{n}");
            if !names.contains(&candidate) {
                break candidate;
            }
            n += 1;
        }
    } else {
        name
    };
    names.insert(name.clone());
    name
}

/// Sparkplug `Quality` of an OPC UA StatusCode, `None` when Good (the
/// property is then omitted). Severity bits 30–31: 00 Good, 01 Uncertain
/// (500), 10 and the invalid 11 Bad (0).
pub fn quality(status: u32) -> Option<i32> {
    match status >> 30 {
        0 => None,
        1 => Some(QUALITY_UNCERTAIN),
        _ => Some(QUALITY_BAD),
    }
}

/// The datatype a value declares, `None` for values that carry no type
/// (null, SYSTEM digital states).
fn value_type(v: &Value) -> Option<DataType> {
    match v {
        Value::Null | Value::DigitalState { system: true, .. } => None,
        Value::Bool(_) => Some(DataType::Boolean),
        Value::I64(_) => Some(DataType::Int64),
        Value::U64(_) => Some(DataType::UInt64),
        Value::F64(_) => Some(DataType::Double),
        Value::Str(_) | Value::DigitalState { .. } => Some(DataType::String),
    }
}

enum Encoded {
    Null,
    Value(metric::Value),
}

/// Encode `v` for a metric declared as `datatype`; `None` if it does not fit.
fn encode(datatype: DataType, v: &Value) -> Option<Encoded> {
    use metric::Value as V;
    let value = match (datatype, v) {
        (_, Value::Null | Value::DigitalState { system: true, .. }) => return Some(Encoded::Null),
        (DataType::Double, Value::F64(f)) => V::DoubleValue(*f),
        (DataType::Double, Value::I64(i)) if i.unsigned_abs() <= F64_EXACT => {
            V::DoubleValue(*i as f64)
        }
        (DataType::Double, Value::U64(u)) if *u <= F64_EXACT => V::DoubleValue(*u as f64),
        (DataType::Int64, Value::I64(i)) => V::LongValue(i.cast_unsigned()),
        (DataType::Int64, Value::U64(u)) if i64::try_from(*u).is_ok() => V::LongValue(*u),
        (DataType::UInt64, Value::U64(u)) => V::LongValue(*u),
        (DataType::UInt64, Value::I64(i)) if *i >= 0 => V::LongValue(i.cast_unsigned()),
        (DataType::Boolean, Value::Bool(b)) => V::BooleanValue(*b),
        (DataType::String, Value::Str(s)) => V::StringValue(s.clone()),
        (DataType::String, Value::DigitalState { name, .. }) => V::StringValue(name.clone()),
        _ => return None,
    };
    Some(Encoded::Value(value))
}

fn ms(ts_ns: i64) -> u64 {
    u64::try_from(ts_ns.div_euclid(1_000_000)).unwrap_or(0)
}

fn bool_value(b: bool) -> metric::Value {
    metric::Value::BooleanValue(b)
}

fn long_value(v: u64) -> metric::Value {
    metric::Value::LongValue(v)
}

fn node_birth(
    name: &str,
    alias: u64,
    datatype: DataType,
    now_ms: u64,
    value: metric::Value,
) -> Metric {
    Metric {
        name: Some(name.into()),
        alias: Some(alias),
        timestamp: Some(now_ms),
        datatype: Some(datatype as u32),
        value: Some(value),
        ..Metric::default()
    }
}

fn node_data(alias: u64, now_ms: u64, value: metric::Value) -> Metric {
    Metric {
        alias: Some(alias),
        timestamp: Some(now_ms),
        value: Some(value),
        ..Metric::default()
    }
}

/// A property set under construction.
#[derive(Default)]
struct Props(PropertySet);

impl Props {
    fn push(&mut self, key: &str, datatype: DataType, value: property_value::Value) {
        self.0.keys.push(key.into());
        self.0.values.push(PropertyValue {
            r#type: Some(datatype as u32),
            is_null: None,
            value: Some(value),
        });
    }

    fn int32(&mut self, key: &str, v: i32) {
        self.push(
            key,
            DataType::Int32,
            property_value::Value::IntValue(v.cast_unsigned()),
        );
    }

    fn finish(self) -> Option<PropertySet> {
        (!self.0.keys.is_empty()).then_some(self.0)
    }
}

/// Per-sample properties: quality when not Good, digital state facts, and
/// (optionally) the nanosecond timestamp and record sequence.
fn sample_props(props: &mut Props, s: &SampleRef<'_>, native_properties: bool) {
    if let Some(q) = quality(s.status) {
        props.int32(QUALITY, q);
        props.push(
            "StatusCode",
            DataType::UInt32,
            property_value::Value::IntValue(s.status),
        );
        if let Some(text) = native_text(s.native) {
            props.push(
                "native_quality",
                DataType::String,
                property_value::Value::StringValue(text),
            );
        }
    }
    if let Value::DigitalState { code, name, system } = s.value {
        props.int32("StateCode", *code);
        if *system {
            props.push(
                "State",
                DataType::String,
                property_value::Value::StringValue(name.clone()),
            );
        }
    }
    if native_properties {
        props.push(
            "ts_ns",
            DataType::Int64,
            property_value::Value::LongValue(s.ts_ns.cast_unsigned()),
        );
        props.push(
            "record_seq",
            DataType::UInt64,
            property_value::Value::LongValue(s.record_seq),
        );
    }
}

fn data_metric(alias: u64, s: &SampleRef<'_>, encoded: Encoded, native: bool) -> Metric {
    let mut props = Props::default();
    sample_props(&mut props, s, native);
    let (is_null, value) = match encoded {
        Encoded::Null => (Some(true), None),
        Encoded::Value(v) => (None, Some(v)),
    };
    Metric {
        alias: Some(alias),
        timestamp: Some(ms(s.ts_ns)),
        is_historical: s.historical.then_some(true),
        is_null,
        properties: props.finish(),
        value,
        ..Metric::default()
    }
}

fn birth_metric(m: &MetricState, native: bool) -> Metric {
    let s = m.last.view();
    let mut props = Props::default();
    props.push(
        "Tag",
        DataType::String,
        property_value::Value::StringValue(m.tag.clone()),
    );
    if let Some(unit) = &m.unit {
        props.push(
            "engUnit",
            DataType::String,
            property_value::Value::StringValue(unit.clone()),
        );
    }
    sample_props(&mut props, &s, native);
    let (is_null, value) = match encode(m.datatype, s.value).unwrap_or(Encoded::Null) {
        Encoded::Null => (Some(true), None),
        Encoded::Value(v) => (None, Some(v)),
    };
    Metric {
        name: Some(m.name.clone()),
        alias: Some(m.alias),
        timestamp: Some(ms(s.ts_ns)),
        datatype: Some(m.datatype as u32),
        is_historical: s.historical.then_some(true),
        is_null,
        properties: props.finish(),
        value,
        ..Metric::default()
    }
}

/// The source's quality as short text, for the `native_quality` property.
fn native_text(q: &NativeQuality) -> Option<String> {
    Some(match q {
        NativeQuality::None => return None,
        NativeQuality::OpcDa(b) => format!("opc_da:{b}"),
        NativeQuality::OpcUa(c) => format!("opc_ua:0x{c:08X}"),
        NativeQuality::Pi {
            good,
            questionable,
            substituted,
            annotated,
        } => format!(
            "pi:good={good},questionable={questionable},substituted={substituted},annotated={annotated}"
        ),
        NativeQuality::Aveva {
            quality,
            detail,
            opc,
        } => match opc {
            Some(o) => format!("aveva:quality={quality},detail={detail},opc={o}"),
            None => format!("aveva:quality={quality},detail={detail}"),
        },
        NativeQuality::Text(t) => t.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_710_057_700_000;
    const GOOD: u32 = 0;
    const BAD_NO_DATA: u32 = 0x809B_0000;
    const UNCERTAIN_LUV: u32 = 0x4090_0000;

    fn point(system: SourceSystem, tag: &str, ts_ms: i64, value: Value) -> Point {
        Point {
            seq: 7,
            ..Point::new(system, tag, ts_ms * 1_000_000 + 123_456, value)
        }
    }

    fn pi(tag: &str, ts_ms: i64, value: Value) -> Point {
        point(SourceSystem::PiWebApi, tag, ts_ms, value)
    }

    fn node() -> SparkplugNode {
        SparkplugNode::new(SparkplugConfig::new("plant1", "gw01"), 3).expect("valid")
    }

    fn live(n: &mut SparkplugNode) -> Vec<Message> {
        n.birth(NOW)
    }

    fn decode(m: &Message) -> Payload {
        Payload::decode(m.payload.as_slice()).expect("own payload decodes")
    }

    fn kinds(ms: &[Message]) -> Vec<MessageKind> {
        ms.iter().map(|m| m.kind).collect()
    }

    fn prop<'a>(m: &'a Metric, key: &str) -> Option<&'a property_value::Value> {
        let p = m.properties.as_ref()?;
        let i = p.keys.iter().position(|k| k == key)?;
        p.values.get(i)?.value.as_ref()
    }

    fn by_name<'a>(p: &'a Payload, name: &str) -> &'a Metric {
        p.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .expect("metric present")
    }

    fn rebirth_cmd(value: bool) -> Vec<u8> {
        Payload {
            timestamp: Some(NOW),
            metrics: vec![Metric {
                name: Some(REBIRTH.into()),
                datatype: Some(DataType::Boolean as u32),
                value: Some(metric::Value::BooleanValue(value)),
                ..Metric::default()
            }],
            ..Payload::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn ids_and_limits_are_validated_naming_the_key() {
        let cases: [(SparkplugConfig, &str); 7] = [
            (SparkplugConfig::new("", "gw"), "sparkplug.group_id"),
            (SparkplugConfig::new("a/b", "gw"), "sparkplug.group_id"),
            (
                SparkplugConfig::new("site", "g+w"),
                "sparkplug.edge_node_id",
            ),
            (
                SparkplugConfig::new("site", "gw\n"),
                "sparkplug.edge_node_id",
            ),
            (
                SparkplugConfig {
                    primary_host_id: Some("scada#1".into()),
                    ..SparkplugConfig::new("site", "gw")
                },
                "sparkplug.primary_host_id",
            ),
            (
                SparkplugConfig {
                    data_qos: 2,
                    ..SparkplugConfig::new("site", "gw")
                },
                "sparkplug.data_qos",
            ),
            (
                SparkplugConfig {
                    max_metrics_per_device: 0,
                    ..SparkplugConfig::new("site", "gw")
                },
                "sparkplug.max_metrics_per_device",
            ),
        ];
        for (cfg, key) in cases {
            let err = SparkplugNode::new(cfg, 0).expect_err("invalid");
            assert_eq!(err.key, key);
        }
        let err = SparkplugNode::new(SparkplugConfig::new("site", "gw"), 256).expect_err("bdSeq");
        assert_eq!(err.key, "sparkplug.bd_seq");
        assert!(SparkplugNode::new(SparkplugConfig::new("Site 1", "gw-01"), 255).is_ok());
    }

    #[test]
    fn config_reads_from_toml_like_json_with_defaults() {
        let cfg: SparkplugConfig =
            serde_json::from_str(r#"{"group_id":"plant1","edge_node_id":"gw01"}"#).expect("json");
        assert_eq!(cfg, SparkplugConfig::new("plant1", "gw01"));
        assert!(
            serde_json::from_str::<SparkplugConfig>(
                r#"{"group_id":"p","edge_node_id":"g","typo":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn will_is_ndeath_qos1_not_retained_with_only_bdseq() {
        let n = node();
        let w = n.will();
        assert_eq!(w.kind, MessageKind::NDeath);
        assert_eq!(w.topic, "spBv1.0/plant1/NDEATH/gw01");
        assert_eq!((w.qos, w.retain), (1, false));
        let p = decode(&w);
        assert_eq!(p.seq, None);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some(BD_SEQ));
        assert_eq!(p.metrics[0].datatype, Some(DataType::Int64 as u32));
        assert_eq!(p.metrics[0].value, Some(metric::Value::LongValue(3)));
    }

    #[test]
    fn nbirth_has_seq_zero_matching_bdseq_rebirth_false_and_health() {
        let mut n = node();
        let out = live(&mut n);
        assert_eq!(kinds(&out), [MessageKind::NBirth]);
        let m = &out[0];
        assert_eq!(m.topic, "spBv1.0/plant1/NBIRTH/gw01");
        assert_eq!((m.qos, m.retain), (0, false));
        let p = decode(m);
        assert_eq!((p.seq, p.timestamp), (Some(0), Some(NOW)));
        let bd = by_name(&p, BD_SEQ);
        assert_eq!(bd.value, decode(&n.will()).metrics[0].value);
        assert_eq!(bd.datatype, Some(DataType::Int64 as u32));
        let rb = by_name(&p, REBIRTH);
        assert_eq!(rb.value, Some(metric::Value::BooleanValue(false)));
        assert_eq!(rb.datatype, Some(DataType::Boolean as u32));
        for (name, dt) in [
            (LINK_UP, DataType::Boolean),
            (LAST_SEQ, DataType::UInt64),
            (GAP_COUNT, DataType::UInt64),
        ] {
            let h = by_name(&p, name);
            assert_eq!(h.datatype, Some(dt as u32));
            assert_eq!(h.timestamp, Some(NOW));
        }
        // Every birth metric has a name and a unique alias.
        let aliases: HashSet<u64> = p.metrics.iter().filter_map(|m| m.alias).collect();
        assert_eq!(aliases.len(), p.metrics.len());
    }

    #[test]
    fn birth_and_data_roundtrip() {
        let mut n = node();
        live(&mut n);
        let mut b = pi("BATCH.ID", 1_000, Value::Str("B-7".into()));
        b.unit = Some("id".into());
        let pts = [
            pi("TT101.PV", 1_000, Value::F64(71.5)),
            b,
            pi("PUMP7.Running", 1_001, Value::Bool(true)),
            point(SourceSystem::Aveva, "FIC101.PV", 1_002, Value::I64(-5)),
            pi("TT101.PV", 2_000, Value::F64(71.9)),
            point(SourceSystem::Aveva, "FIC101.PV", 2_002, Value::I64(6)),
        ];
        let out = n.points(&pts, Mode::Live, NOW + 1).expect("publishing");
        assert_eq!(
            kinds(&out.messages),
            [
                MessageKind::DBirth,
                MessageKind::DBirth,
                MessageKind::DData,
                MessageKind::DData
            ]
        );
        let topics: Vec<&str> = out.messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "spBv1.0/plant1/DBIRTH/gw01/pi",
                "spBv1.0/plant1/DBIRTH/gw01/aveva",
                "spBv1.0/plant1/DDATA/gw01/pi",
                "spBv1.0/plant1/DDATA/gw01/aveva",
            ]
        );
        let seqs: Vec<Option<u64>> = out.messages.iter().map(|m| decode(m).seq).collect();
        assert_eq!(seqs, [Some(1), Some(2), Some(3), Some(4)]);

        let pi_birth = decode(&out.messages[0]);
        let names: Vec<&str> = pi_birth
            .metrics
            .iter()
            .filter_map(|m| m.name.as_deref())
            .collect();
        assert_eq!(names, ["TT101_PV", "BATCH_ID", "PUMP7_Running"]);
        let tt = by_name(&pi_birth, "TT101_PV");
        assert_eq!(tt.datatype, Some(DataType::Double as u32));
        assert_eq!(tt.value, Some(metric::Value::DoubleValue(71.5)));
        assert_eq!(tt.timestamp, Some(1_000));
        assert_eq!(tt.is_null, None);
        assert_eq!(tt.is_historical, None);
        assert_eq!(
            prop(tt, "Tag"),
            Some(&property_value::Value::StringValue("TT101.PV".into()))
        );
        assert_eq!(
            prop(tt, "ts_ns"),
            Some(&property_value::Value::LongValue(1_000_123_456))
        );
        assert_eq!(prop(tt, QUALITY), None);
        let batch = by_name(&pi_birth, "BATCH_ID");
        assert_eq!(batch.datatype, Some(DataType::String as u32));
        assert_eq!(
            prop(batch, "engUnit"),
            Some(&property_value::Value::StringValue("id".into()))
        );
        let run = by_name(&pi_birth, "PUMP7_Running");
        assert_eq!(run.datatype, Some(DataType::Boolean as u32));

        let av_birth = decode(&out.messages[1]);
        let fic = by_name(&av_birth, "FIC101_PV");
        assert_eq!(fic.datatype, Some(DataType::Int64 as u32));
        assert_eq!(
            fic.value,
            Some(metric::Value::LongValue((-5i64).cast_unsigned()))
        );

        // DDATA carries only what the births did not: by alias, no name,
        // no datatype, source timestamps.
        let pi_data = decode(&out.messages[2]);
        assert_eq!(pi_data.metrics.len(), 1);
        let d = &pi_data.metrics[0];
        assert_eq!((d.name.as_ref(), d.datatype), (None, None));
        assert_eq!(d.alias, tt.alias);
        assert_eq!(d.timestamp, Some(2_000));
        assert_eq!(d.value, Some(metric::Value::DoubleValue(71.9)));
        assert_eq!(
            prop(d, "record_seq"),
            Some(&property_value::Value::LongValue(7))
        );
        let av_data = decode(&out.messages[3]);
        assert_eq!(av_data.metrics[0].alias, fic.alias);
        assert_eq!(av_data.metrics[0].value, Some(metric::Value::LongValue(6)));
        assert_eq!(n.stats().points, 6);
    }

    #[test]
    fn seq_wraps_after_255_and_nbirth_resets_it() {
        let mut n = node();
        live(&mut n);
        let mut seqs = Vec::new();
        for i in 0..300 {
            let out = n
                .points(&[pi("A", i, Value::F64(0.0))], Mode::Live, NOW)
                .expect("publishing");
            for m in &out.messages {
                seqs.push(decode(m).seq.expect("seq"));
            }
        }
        // 1 DBIRTH (seq 1) then 299 DDATA.
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(*s, (i as u64 + 1) % 256, "message {i}");
        }
        assert!(seqs.contains(&255) && seqs.contains(&0));
        let again = n.birth(NOW);
        assert_eq!(decode(&again[0]).seq, Some(0));
        assert_eq!(decode(&again[1]).seq, Some(1));
    }

    #[test]
    fn aliases_are_stable_across_rebirth_and_new_metrics() {
        let mut n = node();
        live(&mut n);
        n.points(
            &[pi("A", 1, Value::F64(1.0)), pi("B", 1, Value::F64(2.0))],
            Mode::Live,
            NOW,
        )
        .expect("publishing");
        let aliases = |p: &Payload| -> Vec<(String, u64)> {
            p.metrics
                .iter()
                .map(|m| (m.name.clone().unwrap_or_default(), m.alias.unwrap_or(0)))
                .collect()
        };
        let first = aliases(&decode(&n.birth(NOW)[1]));
        assert_eq!(
            first,
            [
                ("A".to_string(), FIRST_DEVICE_ALIAS),
                ("B".to_string(), FIRST_DEVICE_ALIAS + 1)
            ]
        );
        let out = n
            .points(
                &[pi("C", 2, Value::F64(3.0)), pi("A", 2, Value::F64(4.0))],
                Mode::Live,
                NOW,
            )
            .expect("publishing");
        assert_eq!(
            kinds(&out.messages),
            [MessageKind::DBirth, MessageKind::DData]
        );
        let grown = aliases(&decode(&out.messages[0]));
        assert_eq!(&grown[..2], &first[..]);
        assert_eq!(grown[2], ("C".to_string(), FIRST_DEVICE_ALIAS + 2));
        assert_eq!(
            decode(&out.messages[1]).metrics[0].alias,
            Some(FIRST_DEVICE_ALIAS)
        );
        // A second device continues the node-wide alias space.
        let out = n
            .points(
                &[point(SourceSystem::Aveva, "A", 3, Value::F64(5.0))],
                Mode::Live,
                NOW,
            )
            .expect("publishing");
        assert_eq!(
            aliases(&decode(&out.messages[0])),
            [("A".to_string(), FIRST_DEVICE_ALIAS + 3)]
        );
    }

    #[test]
    fn rebirth_command_answers_from_cache_with_same_bdseq() {
        let mut n = node();
        live(&mut n);
        n.points(
            &[pi("A", 1, Value::F64(1.0)), pi("A", 5, Value::F64(9.5))],
            Mode::Live,
            NOW,
        )
        .expect("publishing");
        let will_bd = decode(&n.will()).metrics[0].value.clone();
        let out = n.command("spBv1.0/plant1/NCMD/gw01", &rebirth_cmd(true), NOW + 10);
        let CommandOutcome::Rebirth(msgs) = out else {
            panic!("expected a rebirth, got {out:?}");
        };
        assert_eq!(kinds(&msgs), [MessageKind::NBirth, MessageKind::DBirth]);
        let nb = decode(&msgs[0]);
        assert_eq!(nb.seq, Some(0));
        assert_eq!(by_name(&nb, BD_SEQ).value, will_bd);
        let db = decode(&msgs[1]);
        assert_eq!(db.seq, Some(1));
        let a = by_name(&db, "A");
        assert_eq!(a.value, Some(metric::Value::DoubleValue(9.5)));
        assert_eq!(a.timestamp, Some(5));
        assert_eq!(db.timestamp, Some(NOW + 10));
        assert_eq!(n.stats().rebirth_requests, 1);
        // A rebirth by alias is understood too.
        let by_alias = Payload {
            timestamp: Some(NOW),
            metrics: vec![Metric {
                alias: Some(ALIAS_REBIRTH),
                value: Some(metric::Value::BooleanValue(true)),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        assert!(matches!(
            n.command("spBv1.0/plant1/NCMD/gw01", &by_alias.encode_to_vec(), NOW),
            CommandOutcome::Rebirth(_)
        ));
    }

    #[test]
    fn other_commands_are_refused() {
        let mut n = node();
        live(&mut n);
        let write = Payload {
            timestamp: Some(NOW),
            metrics: vec![Metric {
                name: Some("Node Control/Reboot".into()),
                value: Some(metric::Value::BooleanValue(true)),
                ..Metric::default()
            }],
            ..Payload::default()
        }
        .encode_to_vec();
        let ncmd = "spBv1.0/plant1/NCMD/gw01";
        let cases: [(&str, Vec<u8>, Refusal); 6] = [
            (
                "spBv1.0/plant1/DCMD/gw01/pi",
                rebirth_cmd(true),
                Refusal::DeviceCommand,
            ),
            (
                "spBv1.0/plant1/NCMD/other",
                rebirth_cmd(true),
                Refusal::NotForThisNode,
            ),
            (ncmd, write, Refusal::NotRebirth),
            (ncmd, rebirth_cmd(false), Refusal::RebirthNotTrue),
            (
                ncmd,
                Payload::default().encode_to_vec(),
                Refusal::NotRebirth,
            ),
            (ncmd, vec![0; 70_000], Refusal::TooLarge(70_000)),
        ];
        for (topic, payload, why) in cases {
            assert_eq!(
                n.command(topic, &payload, NOW),
                CommandOutcome::Refused(why),
                "{topic}"
            );
        }
        assert_eq!(n.stats().refused_commands, 6);
        assert_eq!(n.stats().rebirth_requests, 0);
        n.disconnected();
        assert_eq!(
            n.command(ncmd, &rebirth_cmd(true), NOW),
            CommandOutcome::Refused(Refusal::NotPublishing)
        );
    }

    #[test]
    fn malformed_command_payload_is_refused() {
        let mut n = node();
        live(&mut n);
        let ncmd = "spBv1.0/plant1/NCMD/gw01";
        // Truncated varint, a length prefix past the end, a wrong wire type.
        for bad in [&[0x08, 0xFF][..], &[0x12, 0x7F, 0x01], &[0x0F], &[0xFF; 11]] {
            assert_eq!(
                n.command(ncmd, bad, NOW),
                CommandOutcome::Refused(Refusal::Malformed),
                "{bad:02x?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn inbound_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut n = SparkplugNode::new(
                SparkplugConfig {
                    primary_host_id: Some("scada".into()),
                    ..SparkplugConfig::new("p", "g")
                },
                0,
            ).expect("valid");
            let _ = n.handle_message("spBv1.0/p/NCMD/g", &b, NOW);
            let _ = n.handle_message("spBv1.0/STATE/scada", &b, NOW);
            let _ = n.handle_message("STATE/scada", &b, NOW);
        }
    }

    #[test]
    fn quality_maps_severity_and_bad_without_value_is_null() {
        assert_eq!(quality(GOOD), None);
        assert_eq!(quality(0x0096_0000), None);
        assert_eq!(quality(UNCERTAIN_LUV), Some(500));
        assert_eq!(quality(BAD_NO_DATA), Some(0));
        assert_eq!(quality(0xC000_0000), Some(0));

        let mut n = node();
        live(&mut n);
        n.points(&[pi("T", 1, Value::F64(1.0))], Mode::Live, NOW)
            .expect("publishing");
        let mut bad = pi("T", 2, Value::Null);
        bad.status = BAD_NO_DATA;
        bad.native_quality = NativeQuality::Aveva {
            quality: 1,
            detail: 24,
            opc: Some(0),
        };
        let mut unc = pi("T", 3, Value::F64(2.0));
        unc.status = UNCERTAIN_LUV;
        let good = pi("T", 4, Value::F64(3.0));
        let out = n
            .points(&[bad, unc, good], Mode::Live, NOW)
            .expect("publishing");
        assert_eq!(kinds(&out.messages), [MessageKind::DData]);
        let p = decode(&out.messages[0]);
        let [bad_m, unc_m, good_m] = &p.metrics[..] else {
            panic!("three metrics");
        };
        assert_eq!((bad_m.is_null, bad_m.value.as_ref()), (Some(true), None));
        assert_eq!(
            prop(bad_m, QUALITY),
            Some(&property_value::Value::IntValue(0))
        );
        assert_eq!(
            prop(bad_m, "StatusCode"),
            Some(&property_value::Value::IntValue(BAD_NO_DATA))
        );
        assert_eq!(
            prop(bad_m, "native_quality"),
            Some(&property_value::Value::StringValue(
                "aveva:quality=1,detail=24,opc=0".into()
            ))
        );
        assert_eq!(
            prop(unc_m, QUALITY),
            Some(&property_value::Value::IntValue(500))
        );
        assert_eq!(unc_m.value, Some(metric::Value::DoubleValue(2.0)));
        assert_eq!(prop(good_m, QUALITY), None);
        assert_eq!(prop(good_m, "StatusCode"), None);
        // The birth of a Bad, valueless first sample is null too.
        let mut first = pi("U", 5, Value::Null);
        first.status = BAD_NO_DATA;
        let out = n.points(&[first], Mode::Live, NOW).expect("publishing");
        let birth = decode(&out.messages[0]);
        let first_m = by_name(&birth, "U");
        assert_eq!(first_m.is_null, Some(true));
        assert_eq!(first_m.datatype, Some(DataType::Double as u32));
        assert_eq!(
            prop(first_m, QUALITY),
            Some(&property_value::Value::IntValue(0))
        );
    }

    #[test]
    fn digital_states_are_strings_and_system_states_are_null() {
        let mut n = node();
        live(&mut n);
        let valve = |ts, name: &str, code, system| {
            pi(
                "VALVE1",
                ts,
                Value::DigitalState {
                    code,
                    name: name.into(),
                    system,
                },
            )
        };
        let mut timeout = pi(
            "TT101",
            2,
            Value::DigitalState {
                code: 246,
                name: "I/O Timeout".into(),
                system: true,
            },
        );
        timeout.status = 0x8031_0000;
        let pts = [
            valve(1, "Open", 1, false),
            pi("TT101", 1, Value::F64(20.0)),
            timeout,
            pi("TT101", 3, Value::F64(21.0)),
            valve(3, "Closed", 0, false),
        ];
        let out = n.points(&pts, Mode::Live, NOW).expect("publishing");
        // No rebirth for the SYSTEM state on the float tag.
        assert_eq!(
            kinds(&out.messages),
            [MessageKind::DBirth, MessageKind::DData]
        );
        let birth = decode(&out.messages[0]);
        let v = by_name(&birth, "VALVE1");
        assert_eq!(v.datatype, Some(DataType::String as u32));
        assert_eq!(v.value, Some(metric::Value::StringValue("Open".into())));
        assert_eq!(
            prop(v, "StateCode"),
            Some(&property_value::Value::IntValue(1))
        );
        let data = decode(&out.messages[1]);
        let t = &data.metrics[0];
        assert_eq!((t.is_null, t.value.as_ref()), (Some(true), None));
        assert_eq!(
            prop(t, "State"),
            Some(&property_value::Value::StringValue("I/O Timeout".into()))
        );
        assert_eq!(
            prop(t, "StateCode"),
            Some(&property_value::Value::IntValue(246))
        );
        assert_eq!(prop(t, QUALITY), Some(&property_value::Value::IntValue(0)));
        assert_eq!(
            data.metrics[1].value,
            Some(metric::Value::DoubleValue(21.0))
        );
        assert_eq!(
            data.metrics[2].value,
            Some(metric::Value::StringValue("Closed".into()))
        );
    }

    #[test]
    fn datatype_change_rebirths_the_device_before_the_value() {
        let mut n = node();
        live(&mut n);
        n.points(
            &[pi("X", 1, Value::F64(1.0)), pi("Y", 1, Value::F64(1.0))],
            Mode::Live,
            NOW,
        )
        .expect("publishing");
        let pts = [
            pi("Y", 2, Value::F64(2.0)),
            pi("X", 2, Value::Str("text now".into())),
            pi("X", 3, Value::Str("more".into())),
            // Integers widen into a Double metric without a rebirth.
            pi("Y", 3, Value::I64(3)),
            pi("Y", 4, Value::U64(4)),
        ];
        let out = n.points(&pts, Mode::Live, NOW).expect("publishing");
        assert_eq!(
            kinds(&out.messages),
            [MessageKind::DData, MessageKind::DBirth, MessageKind::DData]
        );
        let before = decode(&out.messages[0]);
        assert_eq!(before.metrics.len(), 1);
        assert_eq!(
            before.metrics[0].value,
            Some(metric::Value::DoubleValue(2.0))
        );
        let birth = decode(&out.messages[1]);
        let x = by_name(&birth, "X");
        assert_eq!(x.datatype, Some(DataType::String as u32));
        assert_eq!(x.alias, Some(FIRST_DEVICE_ALIAS));
        assert_eq!(x.value, Some(metric::Value::StringValue("text now".into())));
        let after = decode(&out.messages[2]);
        let values: Vec<_> = after.metrics.iter().map(|m| m.value.clone()).collect();
        assert_eq!(
            values,
            [
                Some(metric::Value::StringValue("more".into())),
                Some(metric::Value::DoubleValue(3.0)),
                Some(metric::Value::DoubleValue(4.0)),
            ]
        );
        assert_eq!(n.stats().device_births, 2);
    }

    #[test]
    fn untyped_first_sample_takes_the_type_of_the_first_typed_one() {
        let mut n = node();
        live(&mut n);
        let mut bad = pi("S", 1, Value::Null);
        bad.status = BAD_NO_DATA;
        let pts = [bad, pi("S", 2, Value::Str("ok".into()))];
        let out = n.points(&pts, Mode::Live, NOW).expect("publishing");
        assert_eq!(
            kinds(&out.messages),
            [MessageKind::DBirth, MessageKind::DData]
        );
        let s = by_name(&decode(&out.messages[0]), "S").clone();
        assert_eq!(s.datatype, Some(DataType::String as u32));
        assert_eq!(s.is_null, Some(true));
    }

    #[test]
    fn backfill_and_historical_points_are_marked() {
        let mut n = node();
        live(&mut n);
        let mut h = pi("A", 1, Value::F64(1.0));
        h.flags.historical = true;
        let out = n
            .points(&[h, pi("A", 2, Value::F64(2.0))], Mode::Live, NOW)
            .expect("publishing");
        assert_eq!(
            by_name(&decode(&out.messages[0]), "A").is_historical,
            Some(true)
        );
        assert_eq!(decode(&out.messages[1]).metrics[0].is_historical, None);
        let out = n
            .points(&[pi("A", 3, Value::F64(3.0))], Mode::Backfill, NOW)
            .expect("publishing");
        assert_eq!(
            decode(&out.messages[0]).metrics[0].is_historical,
            Some(true)
        );
    }

    #[test]
    fn primary_host_state_gates_births() {
        let cfg = SparkplugConfig {
            primary_host_id: Some("scada".into()),
            ..SparkplugConfig::new("plant1", "gw01")
        };
        let mut n = SparkplugNode::new(cfg, 0).expect("valid");
        assert_eq!(
            n.subscriptions(),
            [
                "spBv1.0/plant1/NCMD/gw01",
                "spBv1.0/plant1/DCMD/gw01/+",
                "spBv1.0/STATE/scada",
                "STATE/scada"
            ]
        );
        assert!(n.birth(NOW).is_empty());
        assert_eq!(n.session(), SessionState::AwaitingHost);
        assert_eq!(
            n.points(&[pi("A", 1, Value::F64(1.0))], Mode::Live, NOW),
            Err(SparkplugError::NotPublishing)
        );
        let st = "spBv1.0/STATE/scada";
        let on = |ts: u64| format!(r#"{{"online":true,"timestamp":{ts}}}"#).into_bytes();
        let off = |ts: u64| format!(r#"{{"online":false,"timestamp":{ts}}}"#).into_bytes();
        assert_eq!(
            n.host_state("spBv1.0/STATE/other", &on(10), NOW),
            HostOutcome::Ignored(HostIgnored::OtherHost)
        );
        assert_eq!(
            n.host_state(st, b"{\"online\":\"yes\"}", NOW),
            HostOutcome::Ignored(HostIgnored::Malformed)
        );
        let HostOutcome::Online(births) = n.host_state(st, &on(10), NOW) else {
            panic!("online");
        };
        assert_eq!(kinds(&births), [MessageKind::NBirth]);
        assert_eq!(n.session(), SessionState::Publishing);
        n.points(&[pi("A", 1, Value::F64(1.0))], Mode::Live, NOW)
            .expect("publishing");
        // The retained copy again: no second birth.
        assert_eq!(
            n.host_state(st, &on(10), NOW),
            HostOutcome::Ignored(HostIgnored::Duplicate)
        );
        // Death certificate with the birth's timestamp: offline.
        assert_eq!(n.host_state(st, &off(10), NOW), HostOutcome::Offline);
        assert_eq!(n.session(), SessionState::AwaitingHost);
        assert_eq!(
            n.host_state(st, &on(5), NOW),
            HostOutcome::Ignored(HostIgnored::Stale)
        );
        // The host is back: births from the cache, seq restarts.
        let HostOutcome::Online(births) = n.host_state(st, &on(20), NOW) else {
            panic!("online");
        };
        assert_eq!(kinds(&births), [MessageKind::NBirth, MessageKind::DBirth]);
        assert_eq!(decode(&births[0]).seq, Some(0));
        // Legacy STATE topic with plain text.
        assert_eq!(
            n.host_state("STATE/scada", b"OFFLINE", NOW),
            HostOutcome::Offline
        );
        let HostOutcome::Online(births) = n.host_state("STATE/scada", b"ONLINE\n", NOW) else {
            panic!("online");
        };
        assert_eq!(births.len(), 2);
        assert_eq!(
            n.host_state("STATE/scada", b"ONLINE", NOW),
            HostOutcome::Ignored(HostIgnored::Duplicate)
        );
        assert_eq!(
            n.host_state("STATE/scada", b"online-ish", NOW),
            HostOutcome::Ignored(HostIgnored::Malformed)
        );
        // After a reconnect the retained ONLINE (same timestamp) counts again.
        n.disconnected();
        assert_eq!(
            n.handle_message(st, &on(20), NOW),
            Inbound::Host(HostOutcome::Online(Vec::new()))
        );
        assert_eq!(
            kinds(&n.birth(NOW)),
            [MessageKind::NBirth, MessageKind::DBirth]
        );
    }

    #[test]
    fn state_without_primary_host_is_ignored() {
        let mut n = node();
        live(&mut n);
        assert_eq!(
            n.host_state("spBv1.0/STATE/x", br#"{"online":true,"timestamp":1}"#, NOW),
            HostOutcome::Ignored(HostIgnored::NoPrimaryHost)
        );
    }

    #[test]
    fn disconnect_advances_bdseq_and_rebirth_keeps_it() {
        let mut n = SparkplugNode::new(SparkplugConfig::new("p", "g"), 254).expect("valid");
        let bd = |m: &Message| decode(m).metrics[0].value.clone();
        let births = n.birth(NOW);
        assert_eq!(bd(&births[0]), bd(&n.will()));
        let CommandOutcome::Rebirth(again) = n.command("spBv1.0/p/NCMD/g", &rebirth_cmd(true), NOW)
        else {
            panic!("rebirth");
        };
        assert_eq!(bd(&again[0]), Some(metric::Value::LongValue(254)));
        n.disconnected();
        assert_eq!(n.bd_seq(), 255);
        assert_eq!(n.session(), SessionState::Disconnected);
        n.disconnected();
        assert_eq!(n.bd_seq(), 0);
        assert_eq!(bd(&n.will()), Some(metric::Value::LongValue(0)));
        assert_eq!(bd(&n.birth(NOW)[0]), Some(metric::Value::LongValue(0)));
    }

    #[test]
    fn limits_drop_and_count() {
        let cfg = SparkplugConfig {
            max_devices: 1,
            max_metrics_per_device: 2,
            ..SparkplugConfig::new("p", "g")
        };
        let mut n = SparkplugNode::new(cfg, 0).expect("valid");
        n.birth(NOW);
        let pts = [
            pi("A", 1, Value::F64(1.0)),
            pi("B", 1, Value::F64(1.0)),
            pi("C", 1, Value::F64(1.0)),
            point(SourceSystem::Aveva, "A", 1, Value::F64(1.0)),
            pi("A", 2, Value::F64(2.0)),
        ];
        let out = n.points(&pts, Mode::Live, NOW).expect("publishing");
        assert_eq!((out.dropped_device_limit, out.dropped_metric_limit), (1, 1));
        assert_eq!(
            kinds(&out.messages),
            [MessageKind::DBirth, MessageKind::DData]
        );
        assert_eq!(decode(&out.messages[0]).metrics.len(), 2);
        let s = n.stats();
        assert_eq!(
            (s.dropped_device_limit, s.dropped_metric_limit, s.points),
            (1, 1, 3)
        );
    }

    #[test]
    fn ddata_is_split_at_max_metrics_per_message() {
        let cfg = SparkplugConfig {
            max_metrics_per_message: 2,
            ..SparkplugConfig::new("p", "g")
        };
        let mut n = SparkplugNode::new(cfg, 0).expect("valid");
        n.birth(NOW);
        n.points(&[pi("A", 0, Value::F64(0.0))], Mode::Live, NOW)
            .expect("publishing");
        let pts: Vec<Point> = (1..=5).map(|i| pi("A", i, Value::F64(0.0))).collect();
        let out = n.points(&pts, Mode::Live, NOW).expect("publishing");
        let sizes: Vec<usize> = out
            .messages
            .iter()
            .map(|m| decode(m).metrics.len())
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn health_changes_go_out_as_ndata() {
        let mut n = node();
        let h = DiodeHealth {
            link_up: true,
            last_seq: 41,
            gap_count: 0,
        };
        assert_eq!(n.set_health(h, NOW), None);
        let nb = decode(&live(&mut n)[0]);
        assert_eq!(
            by_name(&nb, LINK_UP).value,
            Some(metric::Value::BooleanValue(true))
        );
        assert_eq!(
            by_name(&nb, LAST_SEQ).value,
            Some(metric::Value::LongValue(41))
        );
        assert_eq!(n.set_health(h, NOW), None);
        let m = n
            .set_health(
                DiodeHealth {
                    last_seq: 42,
                    gap_count: 1,
                    ..h
                },
                NOW,
            )
            .expect("changed");
        assert_eq!(
            (m.kind, m.topic.as_str()),
            (MessageKind::NData, "spBv1.0/plant1/NDATA/gw01")
        );
        let p = decode(&m);
        assert_eq!(p.seq, Some(1));
        let aliases: Vec<Option<u64>> = p.metrics.iter().map(|m| m.alias).collect();
        assert_eq!(aliases, [Some(ALIAS_LAST_SEQ), Some(ALIAS_GAP_COUNT)]);
    }

    #[test]
    fn points_before_birth_leave_the_node_unchanged() {
        let mut n = node();
        assert_eq!(
            n.points(&[pi("A", 1, Value::F64(1.0))], Mode::Live, NOW),
            Err(SparkplugError::NotPublishing)
        );
        assert_eq!(kinds(&n.birth(NOW)), [MessageKind::NBirth]);
    }

    #[test]
    fn metric_names_are_sanitised_and_unique() {
        assert_eq!(metric_name(r"\\PISRV01\TT101.PV"), "PISRV01/TT101_PV");
        assert_eq!(
            metric_name("TIGER.LINE2.TT_101.F_CV"),
            "TIGER_LINE2_TT_101_F_CV"
        );
        assert_eq!(metric_name("[default]line2/tt101"), "_default_line2/tt101");
        assert_eq!(metric_name("TT 205.PV"), "TT 205_PV");
        assert_eq!(metric_name("a//b/"), "a/b");
        assert_eq!(metric_name("x@y#z$%+,"), "x_y_z____");
        assert_eq!(metric_name("//"), "_");
        assert_eq!(metric_name("Température"), "Température");
        let mut n = node();
        live(&mut n);
        let out = n
            .points(
                &[
                    pi("A.B", 1, Value::F64(1.0)),
                    pi("A_B", 1, Value::F64(1.0)),
                    pi("A,B", 1, Value::F64(1.0)),
                ],
                Mode::Live,
                NOW,
            )
            .expect("publishing");
        let birth = decode(&out.messages[0]);
        let names: Vec<&str> = birth
            .metrics
            .iter()
            .filter_map(|m| m.name.as_deref())
            .collect();
        assert_eq!(names, ["A_B", "A_B_2", "A_B_3"]);
    }

    #[test]
    fn output_is_deterministic() {
        let run = || {
            let mut n = node();
            let mut all = n.birth(NOW);
            let pts = [
                pi("A", 1, Value::F64(1.0)),
                point(SourceSystem::Aveva, "B", 1, Value::Bool(true)),
                pi("A", 2, Value::F64(2.0)),
            ];
            all.extend(
                n.points(&pts, Mode::Live, NOW)
                    .expect("publishing")
                    .messages,
            );
            all
        };
        assert_eq!(run(), run());
    }
}
