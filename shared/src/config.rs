//! Configuration types for both programs, and their validation.
//!
//! The shells read TOML into these types (`deny_unknown_fields`, so a typo
//! is an error, not a silently ignored key) and call `validate()`, which
//! computes every derived size once with checked arithmetic and returns a
//! `Valid*` type. A bad value stops startup with an error that names the
//! key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::fec::{MAX_SOURCE_SYMBOLS, SYMBOL_ALIGN};
use crate::files::FilesLimits;
use crate::lane::{LANES, Lane};
use crate::reassembly::ReassemblyLimits;
use crate::record::DecodeLimits;
use crate::seal::TAG_LEN;
use crate::wire::{IPV4_UDP_OVERHEAD, OVERHEAD};

/// A configuration value that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    /// The offending key, as written in the file (`lanes.bulk.repair_ratio`).
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn bad(key: &'static str, reason: &'static str) -> ConfigError {
    ConfigError { key, reason }
}

// --------------------------------------------------------------- metrics

/// `[metrics]` of either program: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port of the HTTP listener serving `/metrics` (any path
    /// answers), e.g. `127.0.0.1:9464`. Empty or absent: no endpoint.
    #[serde(default)]
    pub listen: String,
}

impl MetricsConfig {
    /// The address to serve metrics on; `None` when the endpoint is off.
    pub fn validate(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = listen.parse().map_err(|_| {
            bad(
                "metrics.listen",
                "must be an IP address and port, e.g. 127.0.0.1:9464",
            )
        })?;
        if addr.port() == 0 {
            return Err(bad("metrics.listen", "needs a port"));
        }
        Ok(Some(addr))
    }
}

// ----------------------------------------------------------------- audit

/// `[audit]` of either program: the hash-chained audit log
/// ([`crate::audit`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The log file (JSON lines, appended and fsynced; one program per
    /// file). Absent: `rx-audit.jsonl` or `tx-audit.jsonl` in the
    /// directory of the program's state (`outbox.path`,
    /// `sender.state_path`), so `/var/lib/weir/` with the defaults.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl AuditConfig {
    /// Check `audit.path`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.path {
            Some(p) if p.file_name().is_none() || p.is_dir() => {
                Err(bad("audit.path", "must name a file, not a directory"))
            }
            _ => Ok(()),
        }
    }

    /// The log file: `path`, or `name` beside `state` (a state file).
    pub fn resolve(&self, state: &std::path::Path, name: &str) -> PathBuf {
        self.path.clone().unwrap_or_else(|| {
            state
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."))
                .join(name)
        })
    }
}

// ---------------------------------------------------------------- sender

/// `weir-tx` configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxConfig {
    /// The link toward the diode.
    pub link: TxLink,
    /// Key files.
    pub keys: TxKeys,
    /// Per-lane batching and FEC.
    #[serde(default)]
    pub lanes: TxLanes,
    /// Spool directories of historian exports.
    #[serde(default, rename = "spool")]
    pub spools: Vec<SpoolConfig>,
    /// Syslog listeners (alert lane).
    #[serde(default, rename = "syslog")]
    pub syslogs: Vec<SyslogConfig>,
    /// Followed alert files: Suricata EVE, OPC UA alarm JSON lines (alert lane).
    #[serde(default, rename = "follow")]
    pub follows: Vec<FollowConfig>,
    /// The durable queue alerts wait in when they outrun the link.
    #[serde(default)]
    pub alert_queue: AlertQueueConfig,
    /// Who this sender is, and where it keeps its numbering.
    #[serde(default)]
    pub sender: SenderConfig,
    /// The Prometheus endpoint (off when absent).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
}

impl TxConfig {
    /// The audit log file (`audit.path`, or `tx-audit.jsonl` beside
    /// `sender.state_path`).
    pub fn audit_path(&self) -> PathBuf {
        self.audit
            .resolve(&self.sender.state_path, "tx-audit.jsonl")
    }
}

/// `[sender]`: the sender's identity and its persistent numbering.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Sender id, carried in every session id; the receiver orders the
    /// sessions of each sender id and refuses older ones. Give every
    /// sender on one receiver its own id.
    #[serde(default = "default_sender_id")]
    pub id: u16,
    /// File holding the session epoch and the block and record numbers
    /// (so numbering never restarts or repeats, even after `kill -9`).
    #[serde(default = "default_sender_state")]
    pub state_path: PathBuf,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            id: default_sender_id(),
            state_path: default_sender_state(),
        }
    }
}

fn default_sender_id() -> u16 {
    1
}
fn default_sender_state() -> PathBuf {
    PathBuf::from("/var/lib/weir/tx-state.json")
}

/// `[alert_queue]` of the sender: when the alert lane backs up, alerts
/// wait in this file, in order, instead of being dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQueueConfig {
    /// The queue file (created on first use; one sender per file).
    #[serde(default = "default_alert_queue_path")]
    pub path: PathBuf,
    /// Most bytes of queued alerts (as stored, before the file's own
    /// overhead); an alert that does not fit is dropped and counted
    /// (`alerts_dropped`).
    #[serde(default = "default_alert_queue_max_bytes")]
    pub max_bytes: u64,
}

impl Default for AlertQueueConfig {
    fn default() -> Self {
        Self {
            path: default_alert_queue_path(),
            max_bytes: default_alert_queue_max_bytes(),
        }
    }
}

fn default_alert_queue_path() -> PathBuf {
    PathBuf::from("/var/lib/weir/tx-alert-queue.redb")
}
fn default_alert_queue_max_bytes() -> u64 {
    64 * 1024 * 1024
}

/// Check `[alert_queue]`.
fn valid_alert_queue(q: &AlertQueueConfig) -> Result<(), ConfigError> {
    if q.path.file_name().is_none() {
        return Err(bad("alert_queue.path", "must name a file"));
    }
    if !(1024 * 1024..=1 << 40).contains(&q.max_bytes) {
        return Err(bad(
            "alert_queue.max_bytes",
            "must be between 1 MiB and 1 TiB",
        ));
    }
    Ok(())
}

/// One `[[syslog]]` listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Name used in logs.
    pub name: String,
    /// UDP address to listen on.
    pub udp: Option<SocketAddr>,
    /// TCP address to listen on (octet-counted or newline-framed).
    pub tcp: Option<SocketAddr>,
    /// IANA zone of RFC 3164 timestamps (they carry none).
    #[serde(default = "default_utc")]
    pub tz: String,
    /// Longest message accepted; longer ones are rejected and counted.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
}

/// What a followed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FollowFormat {
    /// Suricata EVE JSON lines (alerts only).
    SuricataEve,
    /// OPC UA Alarms & Conditions events as JSON lines.
    OpcuaAlarmsJsonl,
}

/// One `[[follow]]`ed file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowConfig {
    /// Name used in logs.
    pub name: String,
    /// The file (re-opened when rotated or truncated).
    pub path: PathBuf,
    /// Its format.
    pub format: FollowFormat,
    /// Read existing content on first start instead of starting at the end.
    #[serde(default)]
    pub from_start: bool,
    /// How often the file is checked for new lines.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest line accepted.
    #[serde(default = "default_max_message")]
    pub max_line_bytes: usize,
}

fn default_utc() -> String {
    "UTC".into()
}
fn default_max_message() -> usize {
    64 * 1024
}
fn default_poll() -> Duration {
    Duration::from_millis(100)
}

/// `[link]` of the sender.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxLink {
    /// Where datagrams go (the diode's input side / the receiver).
    pub destination: SocketAddr,
    /// Local address to send from.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Link MTU; datagrams are sized to fit it.
    #[serde(default = "default_mtu")]
    pub mtu_bytes: u16,
    /// Pacing rate on the wire, Mbit/s (including headers).
    pub rate_mbps: f64,
    /// Most datagrams sent back to back. Unset: enough for
    /// [`AUTO_BURST_SPAN`] of the rate, 16 to 256 (the pacer's timer
    /// ticks every millisecond, so a burst must hold a millisecond of the
    /// rate for the rate to be reachable at all).
    #[serde(default)]
    pub burst_datagrams: Option<u16>,
    /// Heartbeat interval.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

/// `[keys]` of the sender.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxKeys {
    /// Key files to load.
    pub files: Vec<PathBuf>,
    /// Key id the sender seals with.
    pub active_key_id: u16,
}

/// `[lanes]`: one table per lane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxLanes {
    /// Alert lane.
    #[serde(default = "LaneConfig::alert_default")]
    pub alert: LaneConfig,
    /// Bulk lane.
    #[serde(default = "LaneConfig::bulk_default")]
    pub bulk: LaneConfig,
}

impl Default for TxLanes {
    fn default() -> Self {
        Self {
            alert: LaneConfig::alert_default(),
            bulk: LaneConfig::bulk_default(),
        }
    }
}

/// Batching and FEC of one lane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// Repair symbols per source symbol (0.25 = 25 %).
    pub repair_ratio: f64,
    /// Repair symbols per block at least.
    pub min_repair: u32,
    /// Largest plaintext batch per block, bytes (before compression).
    pub max_batch_bytes: u32,
    /// A batch is sent when its oldest record is this old.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// zstd level (1–19), or 0 for no compression.
    pub zstd_level: i32,
    /// Blocks whose symbols are interleaved in send order, so a burst of
    /// loss costs several blocks a little instead of one block everything.
    pub interleave_blocks: u32,
    /// How long the pacer waits for `interleave_blocks` blocks to be in
    /// hand before it sends fewer interleaved (a source slower than the
    /// link would otherwise send its blocks one after another, unprotected
    /// against bursts). Latency against burst cover; zero: never wait.
    #[serde(default = "default_interleave_wait", with = "humantime_serde")]
    pub interleave_wait: Duration,
    /// Send every block a second time, this long after the first (time
    /// diversity against link outages longer than FEC can bridge); zero,
    /// the default, is off.
    #[serde(default, with = "humantime_serde")]
    pub repeat_after: Duration,
    /// Most bytes of encoded blocks held for their repeat; a block that
    /// does not fit is not repeated (counted: `repeats_skipped`).
    #[serde(default = "default_repeat_buffer")]
    pub repeat_buffer_bytes: u64,
}

/// Default of `lanes.*.interleave_wait`: 500 ms.
fn default_interleave_wait() -> Duration {
    Duration::from_millis(500)
}

/// Default of `lanes.*.repeat_buffer_bytes`: 64 MiB.
fn default_repeat_buffer() -> u64 {
    64 * 1024 * 1024
}

impl LaneConfig {
    fn alert_default() -> Self {
        Self {
            repair_ratio: 0.5,
            min_repair: 4,
            max_batch_bytes: 16 * 1024,
            max_age: Duration::from_millis(2),
            zstd_level: 1,
            interleave_blocks: 1,
            interleave_wait: default_interleave_wait(),
            repeat_after: Duration::ZERO,
            repeat_buffer_bytes: default_repeat_buffer(),
        }
    }

    fn bulk_default() -> Self {
        Self {
            repair_ratio: 0.25,
            min_repair: 2,
            max_batch_bytes: 256 * 1024,
            max_age: Duration::from_millis(200),
            zstd_level: 1,
            interleave_blocks: 4,
            interleave_wait: default_interleave_wait(),
            repeat_after: Duration::ZERO,
            repeat_buffer_bytes: default_repeat_buffer(),
        }
    }
}

/// What to do with a spool file once every block made from it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDone {
    /// Move it to `done/`.
    Move,
    /// Delete it.
    Delete,
}

/// What a spool's files are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolKind {
    /// Historian exports, parsed into points; `format` names the dialect.
    #[default]
    Historian,
    /// Opaque files, sent byte for byte in chunks of `chunk_bytes`.
    Files,
}

/// Chunk size of a files spool unless `chunk_bytes` says otherwise.
pub const DEFAULT_CHUNK_BYTES: u32 = 64 * 1024;

/// Room a file chunk's other fields (name of at most
/// [`MAX_FILE_NAME_BYTES`], size, offsets, SHA-256) take in a batch
/// beside its data: a chunk must fit a bulk batch with this to spare.
pub const FILE_CHUNK_OVERHEAD: u32 = 1024;

/// Longest file name (UTF-8 bytes) a file chunk carries.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// One `[[spool]]` directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Name used in logs and on the wire.
    pub name: String,
    /// Files of this spool are historical back-fill (old data sent now),
    /// not live exports: points are flagged historical, so the receiver's
    /// too-old check leaves them alone.
    #[serde(default)]
    pub backfill: bool,
    /// Base directory; `incoming/`, `working/`, `done/`, `quarantine/` live in it.
    pub dir: PathBuf,
    /// `historian` (default: exports parsed into points) or `files`
    /// (opaque files sent in chunks).
    #[serde(default)]
    pub kind: SpoolKind,
    /// Export format of a historian spool (`pi-webapi-json`, `aveva-csv`,
    /// `ignition-csv`, `proficy-csv`, `influx-lp`, `opcua-jsonl`,
    /// `piarc-csv`, `generic-csv`); required by, and only allowed with,
    /// `kind = "historian"`.
    #[serde(default)]
    pub format: Option<crate::formats::Format>,
    /// Chunk size of a files spool, bytes (default 64 KiB); at least
    /// [`FILE_CHUNK_OVERHEAD`] below `lanes.bulk.max_batch_bytes`. Only
    /// allowed with `kind = "files"`.
    #[serde(default)]
    pub chunk_bytes: Option<u32>,
    /// IANA time zone of local timestamps in the files.
    pub tz: Option<String>,
    /// Tag for formats whose files carry no tag name (PI Web API recorded
    /// values); by default the file name without extension.
    pub tag: Option<String>,
    /// Tags whose `1`/`0` values are booleans (CSV exports carry no type).
    #[serde(default)]
    pub discrete_tags: Vec<String>,
    /// Largest file taken; a larger one is quarantined whole.
    #[serde(default = "default_max_file")]
    pub max_file_bytes: u64,
    /// `move` to `done/` (default) or `delete`.
    #[serde(default = "default_on_done")]
    pub on_done: OnDone,
    /// How often the directory is scanned.
    #[serde(default = "default_scan", with = "humantime_serde")]
    pub scan_interval: Duration,
    /// Ignition `sqlth_te` export (CSV) that maps `tagid` to tag path and
    /// data type; required by, and only allowed with, `ignition-csv`.
    #[serde(default)]
    pub tag_table: Option<PathBuf>,
    /// Column mapping of a `generic-csv` spool; required by, and only
    /// allowed with, that format.
    #[serde(default)]
    pub csv: Option<crate::formats::CsvMapping>,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
fn default_mtu() -> u16 {
    1500
}
/// How much of the rate an unset `link.burst_datagrams` holds: three
/// timer ticks, so that a late wake-up loses no tokens.
pub const AUTO_BURST_SPAN: Duration = Duration::from_millis(3);

/// The fewest datagrams an unset `link.burst_datagrams` allows.
const AUTO_BURST_MIN: u64 = 16;
/// The most datagrams an unset `link.burst_datagrams` allows: 3 ms of
/// 1 Gbit/s. Longer bursts overrun receive buffers faster than they help
/// the rate (one burst per millisecond still allows 3 Gbit/s).
const AUTO_BURST_MAX: u64 = 256;

/// `link.burst_datagrams` when unset: [`AUTO_BURST_SPAN`] of the rate, in
/// datagrams, between 16 and 256.
fn auto_burst(rate_bytes_per_sec: u64, datagram_bytes: usize) -> u16 {
    let span = u128::from(rate_bytes_per_sec) * AUTO_BURST_SPAN.as_micros()
        / 1_000_000
        / (datagram_bytes.max(1) as u128);
    let n = u64::try_from(span)
        .unwrap_or(u64::MAX)
        .clamp(AUTO_BURST_MIN, AUTO_BURST_MAX);
    u16::try_from(n).unwrap_or(u16::MAX)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_on_done() -> OnDone {
    OnDone::Move
}
fn default_max_file() -> u64 {
    256 * 1024 * 1024
}
fn default_scan() -> Duration {
    Duration::from_secs(1)
}

/// Validated per-lane settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidLane {
    /// Repair ratio in per mille.
    pub repair_permille: u32,
    /// Minimum repair symbols per block.
    pub min_repair: u32,
    /// Flush a batch at this many plaintext bytes.
    pub max_batch_bytes: u32,
    /// Flush a batch at this age.
    pub max_age: Duration,
    /// zstd level, `None` for none.
    pub zstd_level: Option<i32>,
    /// Blocks interleaved in send order.
    pub interleave_blocks: usize,
    /// Longest wait for `interleave_blocks` blocks before sending fewer.
    pub interleave_wait: Duration,
    /// Each block is sent again this long after the first time; `None`: off.
    pub repeat_after: Option<Duration>,
    /// Most bytes of encoded blocks held for their repeat.
    pub repeat_buffer_bytes: u64,
}

/// A validated sender configuration, with derived sizes.
#[derive(Debug, Clone)]
pub struct ValidTx {
    /// The configuration as read.
    pub raw: TxConfig,
    /// RaptorQ symbol size derived from the MTU.
    pub symbol_size: u16,
    /// Bytes of one datagram on the wire (header, symbol, CRC).
    pub datagram_bytes: usize,
    /// Largest sealed block the sender can produce.
    pub max_block_bytes: u32,
    /// Pacing rate, bytes per second of UDP payload.
    pub rate_bytes_per_sec: u64,
    /// Most datagrams back to back (`link.burst_datagrams`, or its
    /// default for the rate).
    pub burst_datagrams: usize,
    /// Pacing burst, bytes.
    pub burst_bytes: u64,
    /// Per-lane settings, indexed by [`Lane::index`].
    pub lanes: [ValidLane; LANES],
    /// Where to serve Prometheus metrics (`[metrics]`); `None`: off.
    pub metrics: Option<SocketAddr>,
}

/// Symbol size for an MTU: the IP/UDP payload minus Weir's overhead,
/// rounded down to the RaptorQ alignment. IPv6 headers are 20 bytes longer
/// than IPv4's.
pub fn symbol_size_for_mtu(mtu: u16, ipv6: bool) -> Option<u16> {
    let ip_udp = IPV4_UDP_OVERHEAD + if ipv6 { 20 } else { 0 };
    let room = usize::from(mtu)
        .checked_sub(ip_udp)?
        .checked_sub(OVERHEAD)?;
    let aligned = room - room % usize::from(SYMBOL_ALIGN);
    u16::try_from(aligned).ok().filter(|s| *s >= 64)
}

fn valid_lane(c: &LaneConfig, keys: [&'static str; 9]) -> Result<ValidLane, ConfigError> {
    if !(0.0..=10.0).contains(&c.repair_ratio) || !c.repair_ratio.is_finite() {
        return Err(bad(keys[0], "must be between 0 and 10"));
    }
    if c.min_repair > 10_000 {
        return Err(bad(keys[1], "must be at most 10000"));
    }
    if !(256..=64 * 1024 * 1024).contains(&c.max_batch_bytes) {
        return Err(bad(keys[2], "must be between 256 B and 64 MiB"));
    }
    if c.max_age.is_zero() || c.max_age > Duration::from_hours(1) {
        return Err(bad(keys[3], "must be between 1 ns and 1 h"));
    }
    if !(0..=19).contains(&c.zstd_level) {
        return Err(bad(keys[4], "must be 0 (off) to 19"));
    }
    if !(1..=64).contains(&c.interleave_blocks) {
        return Err(bad(keys[5], "must be between 1 and 64"));
    }
    if !c.repeat_after.is_zero()
        && !(Duration::from_millis(10)..=Duration::from_hours(1)).contains(&c.repeat_after)
    {
        return Err(bad(keys[6], "must be 0 (off) or between 10 ms and 1 h"));
    }
    if !(64 * 1024..=1 << 40).contains(&c.repeat_buffer_bytes) {
        return Err(bad(keys[7], "must be between 64 KiB and 1 TiB"));
    }
    if c.interleave_wait > Duration::from_secs(10) {
        return Err(bad(keys[8], "must be at most 10 s"));
    }
    // reason: repair_ratio was checked to be finite and in 0..=10 above, so
    // the rounded permille value is a small non-negative integer.
    #[allow(clippy::cast_sign_loss)]
    let repair_permille = (c.repair_ratio * 1000.0).round() as u32;
    Ok(ValidLane {
        interleave_blocks: c.interleave_blocks as usize,
        interleave_wait: c.interleave_wait,
        repair_permille,
        min_repair: c.min_repair,
        max_batch_bytes: c.max_batch_bytes,
        max_age: c.max_age,
        zstd_level: (c.zstd_level > 0).then_some(c.zstd_level),
        repeat_after: (!c.repeat_after.is_zero()).then_some(c.repeat_after),
        repeat_buffer_bytes: c.repeat_buffer_bytes,
    })
}

/// A lane that repeats its blocks must be able to hold its largest one:
/// `max_batch_bytes` doubled (the batcher's overshoot) plus zstd's worst
/// growth and the tag, as FEC-encoded datagrams.
fn valid_repeat_buffer(
    lane: &ValidLane,
    symbol_size: u16,
    datagram_bytes: usize,
    key: &'static str,
) -> Result<(), ConfigError> {
    if lane.repeat_after.is_none() {
        return Ok(());
    }
    let block = u64::from(lane.max_batch_bytes) * 2
        + u64::from(lane.max_batch_bytes) / 64
        + 1024
        + TAG_LEN as u64;
    let k = block.div_ceil(u64::from(symbol_size));
    let k = u32::try_from(k).unwrap_or(u32::MAX);
    let r = crate::fec::repair_symbols(k, lane.repair_permille, lane.min_repair);
    let encoded = (u64::from(k) + u64::from(r)) * datagram_bytes as u64;
    if lane.repeat_buffer_bytes < encoded {
        return Err(bad(
            key,
            "cannot hold one of this lane's largest encoded blocks (2 x max_batch_bytes, plus repair symbols and headers); raise it",
        ));
    }
    Ok(())
}

/// Check the transmitter's `[link]` table; returns the symbol size its MTU
/// allows.
fn valid_tx_link(link: &TxLink) -> Result<u16, ConfigError> {
    let symbol_size =
        symbol_size_for_mtu(link.mtu_bytes, link.destination.is_ipv6()).ok_or(bad(
            "link.mtu_bytes",
            "too small: at least 138 bytes (158 for IPv6)",
        ))?;
    if link.destination.ip().is_unspecified() || link.destination.port() == 0 {
        return Err(bad("link.destination", "needs a concrete address and port"));
    }
    if !(link.rate_mbps.is_finite() && link.rate_mbps >= 0.01 && link.rate_mbps <= 100_000.0) {
        return Err(bad("link.rate_mbps", "must be between 0.01 and 100000"));
    }
    if link.burst_datagrams.is_some_and(|b| b == 0 || b > 1024) {
        return Err(bad("link.burst_datagrams", "must be between 1 and 1024"));
    }
    if link.heartbeat_interval < Duration::from_millis(10)
        || link.heartbeat_interval > Duration::from_mins(1)
    {
        return Err(bad(
            "link.heartbeat_interval",
            "must be between 10 ms and 60 s",
        ));
    }
    Ok(symbol_size)
}

/// Check the `[[spool]]` tables: names, scan intervals and time zones.
fn valid_alert_sources(
    syslogs: &[SyslogConfig],
    follows: &[FollowConfig],
) -> Result<(), ConfigError> {
    for s in syslogs {
        if s.udp.is_none() && s.tcp.is_none() {
            return Err(bad(
                "syslog.udp",
                "a [[syslog]] listener needs `udp`, `tcp` or both",
            ));
        }
        if s.tz.parse::<chrono_tz::Tz>().is_err() {
            return Err(bad(
                "syslog.tz",
                "is not an IANA time zone name (e.g. UTC, Europe/Berlin)",
            ));
        }
        if !(480..=1024 * 1024).contains(&s.max_message_bytes) {
            return Err(bad(
                "syslog.max_message_bytes",
                "must be between 480 B and 1 MiB",
            ));
        }
    }
    for f in follows {
        if f.poll_interval < Duration::from_millis(10) {
            return Err(bad("follow.poll_interval", "must be at least 10 ms"));
        }
        if !(480..=16 * 1024 * 1024).contains(&f.max_line_bytes) {
            return Err(bad(
                "follow.max_line_bytes",
                "must be between 480 B and 16 MiB",
            ));
        }
    }
    Ok(())
}

impl SpoolConfig {
    /// Chunk size of a files spool: `chunk_bytes`, or the default.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES)
    }
}

/// Check a file chunk size against the bulk lane it travels on: a chunk
/// and its other fields must fit one batch, or the batcher refuses it.
/// `key` names where the size came from (`spool.chunk_bytes`).
pub fn valid_chunk_bytes(
    chunk_bytes: u32,
    bulk_max_batch_bytes: u32,
    key: &'static str,
) -> Result<(), ConfigError> {
    if chunk_bytes == 0 {
        return Err(bad(key, "must be positive"));
    }
    if chunk_bytes.saturating_add(FILE_CHUNK_OVERHEAD) > bulk_max_batch_bytes {
        return Err(bad(
            key,
            "must be at least 1 KiB below lanes.bulk.max_batch_bytes",
        ));
    }
    Ok(())
}

fn valid_spools(spools: &[SpoolConfig], bulk_max_batch_bytes: u32) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for s in spools {
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "spool.name",
                "must be non-empty ASCII letters, digits, '-' or '_'",
            ));
        }
        if !names.insert(s.name.as_str()) {
            return Err(bad("spool.name", "must be unique"));
        }
        if s.scan_interval < Duration::from_millis(10) {
            return Err(bad("spool.scan_interval", "must be at least 10 ms"));
        }
        match s.kind {
            SpoolKind::Historian => valid_historian_spool(s)?,
            SpoolKind::Files => valid_files_spool(s, bulk_max_batch_bytes)?,
        }
    }
    Ok(())
}

/// A files spool sends bytes, not points: every parsing key is refused.
fn valid_files_spool(s: &SpoolConfig, bulk_max_batch_bytes: u32) -> Result<(), ConfigError> {
    const HISTORIAN_ONLY: &str = "is only used by historian spools, not kind = \"files\"";
    if s.format.is_some() {
        return Err(bad("spool.format", HISTORIAN_ONLY));
    }
    if s.tz.is_some() {
        return Err(bad("spool.tz", HISTORIAN_ONLY));
    }
    if s.tag.is_some() {
        return Err(bad("spool.tag", HISTORIAN_ONLY));
    }
    if !s.discrete_tags.is_empty() {
        return Err(bad("spool.discrete_tags", HISTORIAN_ONLY));
    }
    if s.tag_table.is_some() {
        return Err(bad("spool.tag_table", HISTORIAN_ONLY));
    }
    if s.csv.is_some() {
        return Err(bad("spool.csv", HISTORIAN_ONLY));
    }
    valid_chunk_bytes(s.chunk_size(), bulk_max_batch_bytes, "spool.chunk_bytes")
}

/// A historian spool needs a format, and the zone its format asks for.
fn valid_historian_spool(s: &SpoolConfig) -> Result<(), ConfigError> {
    let format = s.format.ok_or(bad(
        "spool.format",
        "is required for historian spools (or set kind = \"files\")",
    ))?;
    if s.chunk_bytes.is_some() {
        return Err(bad(
            "spool.chunk_bytes",
            "is only used by kind = \"files\" spools",
        ));
    }
    match &s.tz {
        Some(tz) if tz.parse::<chrono_tz::Tz>().is_err() => {
            return Err(bad(
                "spool.tz",
                "is not an IANA time zone name (e.g. America/Chicago)",
            ));
        }
        None if format.local_time() => {
            return Err(bad(
                "spool.tz",
                "is required: this format writes local wall-clock time",
            ));
        }
        _ => {}
    }
    valid_format_extras(s, format)
}

/// Check the per-format keys of one spool: Ignition's tag table and the
/// generic CSV mapping (whose local-time pattern also needs `spool.tz`).
fn valid_format_extras(s: &SpoolConfig, format: crate::formats::Format) -> Result<(), ConfigError> {
    use crate::formats::Format;
    match (format, &s.tag_table) {
        (Format::Ignition, None) => {
            return Err(bad(
                "spool.tag_table",
                "is required for ignition-csv: the sqlth_te export mapping tagid to tag path",
            ));
        }
        (Format::Ignition, Some(_)) | (_, None) => {}
        (_, Some(_)) => return Err(bad("spool.tag_table", "is only used by ignition-csv")),
    }
    match (format, &s.csv) {
        (Format::GenericCsv, None) => Err(bad(
            "spool.csv",
            "is required for generic-csv: the column mapping",
        )),
        (Format::GenericCsv, Some(map)) => {
            if let Some((key, reason)) = map.problem() {
                return Err(bad(key, reason));
            }
            if map.ts_format.is_local() && s.tz.is_none() {
                return Err(bad(
                    "spool.tz",
                    "is required: spool.csv.ts_format is a local wall-clock pattern",
                ));
            }
            Ok(())
        }
        (_, None) => Ok(()),
        (_, Some(_)) => Err(bad("spool.csv", "is only used by generic-csv")),
    }
}

impl TxConfig {
    /// Check every value and compute derived sizes.
    pub fn validate(self) -> Result<ValidTx, ConfigError> {
        let symbol_size = valid_tx_link(&self.link)?;
        if self.sender.state_path.file_name().is_none() {
            return Err(bad("sender.state_path", "must name a file"));
        }
        if self.keys.files.is_empty() {
            return Err(bad("keys.files", "name at least one key file"));
        }
        let lanes = [
            valid_lane(
                &self.lanes.alert,
                [
                    "lanes.alert.repair_ratio",
                    "lanes.alert.min_repair",
                    "lanes.alert.max_batch_bytes",
                    "lanes.alert.max_age",
                    "lanes.alert.zstd_level",
                    "lanes.alert.interleave_blocks",
                    "lanes.alert.repeat_after",
                    "lanes.alert.repeat_buffer_bytes",
                    "lanes.alert.interleave_wait",
                ],
            )?,
            valid_lane(
                &self.lanes.bulk,
                [
                    "lanes.bulk.repair_ratio",
                    "lanes.bulk.min_repair",
                    "lanes.bulk.max_batch_bytes",
                    "lanes.bulk.max_age",
                    "lanes.bulk.zstd_level",
                    "lanes.bulk.interleave_blocks",
                    "lanes.bulk.repeat_after",
                    "lanes.bulk.repeat_buffer_bytes",
                    "lanes.bulk.interleave_wait",
                ],
            )?,
        ];
        debug_assert_eq!(Lane::ALL.len(), lanes.len());
        // A batch may grow a little under zstd (incompressible data) and
        // gains the frame header and tag; leave room for that.
        let largest = lanes.iter().map(|l| l.max_batch_bytes).max().unwrap_or(0);
        // A batch is flushed once it reaches `max_batch_bytes`, so the last
        // record may overshoot it: allow up to twice the size (a larger
        // record is refused by the batcher), plus zstd's worst-case growth
        // and the loss ledger's trailer.
        let max_block_bytes = largest
            .checked_mul(2)
            .and_then(|b| {
                b.checked_add(
                    b / 64 + 1024 + TAG_LEN as u32 + crate::ledger::MAX_TRAILER as u32 + 2,
                )
            })
            .ok_or(bad("lanes.bulk.max_batch_bytes", "too large"))?;
        if max_block_bytes.div_ceil(u32::from(symbol_size)) > MAX_SOURCE_SYMBOLS {
            return Err(bad(
                "lanes.bulk.max_batch_bytes",
                "too many symbols per block for this MTU",
            ));
        }
        valid_spools(&self.spools, lanes[Lane::Bulk.index()].max_batch_bytes)?;
        valid_alert_sources(&self.syslogs, &self.follows)?;
        valid_alert_queue(&self.alert_queue)?;
        self.audit.validate()?;
        let metrics = self.metrics.validate()?;
        let datagram_bytes = OVERHEAD + usize::from(symbol_size);
        for (lane, key) in lanes.iter().zip([
            "lanes.alert.repeat_buffer_bytes",
            "lanes.bulk.repeat_buffer_bytes",
        ]) {
            valid_repeat_buffer(lane, symbol_size, datagram_bytes, key)?;
        }
        // reason: rate_mbps was checked to be finite and in 0.01..=100000, so
        // the byte rate is positive and far below u64::MAX.
        #[allow(clippy::cast_sign_loss)]
        let rate_bytes_per_sec = (self.link.rate_mbps * 1e6 / 8.0) as u64;
        let burst_datagrams = self
            .link
            .burst_datagrams
            .unwrap_or_else(|| auto_burst(rate_bytes_per_sec, datagram_bytes));
        let burst_bytes = u64::from(burst_datagrams) * datagram_bytes as u64;
        Ok(ValidTx {
            raw: self,
            symbol_size,
            datagram_bytes,
            max_block_bytes,
            rate_bytes_per_sec,
            burst_datagrams: usize::from(burst_datagrams),
            burst_bytes,
            lanes,
            metrics,
        })
    }
}

// -------------------------------------------------------------- receiver

/// `weir-rx` configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RxConfig {
    /// The link from the diode.
    pub link: RxLink,
    /// Key files.
    pub keys: RxKeys,
    /// Bounds on everything the wire can make us hold.
    #[serde(default)]
    pub limits: RxLimits,
    /// MQTT output.
    pub mqtt: MqttConfig,
    /// Opaque file output; without it file chunks are counted and dropped.
    #[serde(default)]
    pub files: Option<FilesConfig>,
    /// The durable outbox between decode and MQTT.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// The gap ledger and the receiver's memory of sender sessions.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Data-quality checks (on, with the defaults, when absent).
    #[serde(default)]
    pub dq: crate::dq::DqConfig,
    /// Sparkplug B output: when present, points are published as a
    /// Sparkplug edge node (`spBv1.0/{group_id}/...`) instead of on the JSON
    /// point topics; alerts, gaps, audit, dq and status stay JSON.
    #[serde(default)]
    pub sparkplug: Option<crate::sparkplug::SparkplugConfig>,
    /// The Prometheus endpoint (off when absent).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
}

impl RxConfig {
    /// The audit log file (`audit.path`, or `rx-audit.jsonl` beside
    /// `outbox.path`).
    pub fn audit_path(&self) -> PathBuf {
        self.audit.resolve(&self.outbox.path, "rx-audit.jsonl")
    }
}

/// `[outbox]` of the receiver: decoded blocks wait here, on disk, until the
/// broker has acknowledged every message made from them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// The outbox file (created if missing; one receiver per file).
    #[serde(default = "default_outbox_path")]
    pub path: PathBuf,
    /// Most block bytes held; a block that does not fit is counted as lost
    /// and reported as a gap.
    #[serde(default = "default_outbox_max_bytes")]
    pub max_bytes: u64,
    /// How long an acknowledged block is kept, so that a broker restart
    /// without persistence (which loses what it had acknowledged but not yet
    /// delivered) can be answered by publishing it again.
    #[serde(default = "default_retain_acked", with = "humantime_serde")]
    pub retain_acked: Duration,
    /// Blocks per lane read from the outbox and not yet acknowledged.
    #[serde(default = "default_outbox_window")]
    pub window_blocks: usize,
}

/// `[ledger]` of the receiver: where lost records are written down, and
/// the newest session of every sender (older ones are refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Append-only JSON lines, one per gap (`weir-rx gaps` reads it).
    #[serde(default = "default_gaps_path")]
    pub gaps_path: PathBuf,
    /// The newest session of every sender (so a restarted receiver
    /// refuses replays of older ones; how far each lane was resolved is
    /// kept in the outbox).
    #[serde(default = "default_sessions_path")]
    pub sessions_path: PathBuf,
    /// Accept a session older than the newest one of its sender (after a
    /// sender's state was restored from a backup, say). Off: such a
    /// session is refused and counted (`drop_old_session`).
    #[serde(default)]
    pub allow_older_sessions: bool,
    /// A lost run whose records cannot be counted yet (its neighbours were
    /// lost too) is reported with what is known after this long.
    #[serde(default = "default_resolve_timeout", with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// How far the sender's clock may be from this receiver's (after the
    /// skew measured from its heartbeats is taken off). A heartbeat sent
    /// longer ago than this is a replay or a stale clock and is ignored;
    /// a session this receiver has no record of, started longer ago than
    /// this, is admitted only once a fresh heartbeat proves it is live.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            gaps_path: default_gaps_path(),
            sessions_path: default_sessions_path(),
            allow_older_sessions: false,
            resolve_timeout: default_resolve_timeout(),
            max_clock_skew: default_max_clock_skew(),
        }
    }
}

fn default_max_clock_skew() -> Duration {
    Duration::from_mins(5)
}

fn default_gaps_path() -> PathBuf {
    PathBuf::from("/var/lib/weir/rx-gaps.jsonl")
}
fn default_sessions_path() -> PathBuf {
    PathBuf::from("/var/lib/weir/rx-sessions.json")
}
fn default_resolve_timeout() -> Duration {
    Duration::from_secs(30)
}

impl LedgerConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.gaps_path.file_name().is_none() {
            return Err(bad("ledger.gaps_path", "must name a file"));
        }
        if self.sessions_path.file_name().is_none() {
            return Err(bad("ledger.sessions_path", "must name a file"));
        }
        if !(Duration::from_secs(1)..=Duration::from_hours(1)).contains(&self.resolve_timeout) {
            return Err(bad("ledger.resolve_timeout", "must be between 1 s and 1 h"));
        }
        if !(Duration::from_secs(5)..=Duration::from_hours(24)).contains(&self.max_clock_skew) {
            return Err(bad("ledger.max_clock_skew", "must be between 5 s and 24 h"));
        }
        Ok(())
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            path: default_outbox_path(),
            max_bytes: default_outbox_max_bytes(),
            retain_acked: default_retain_acked(),
            window_blocks: default_outbox_window(),
        }
    }
}

impl OutboxConfig {
    fn check(&self, max_block_bytes: u32) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() || self.path.is_dir() {
            return Err(bad("outbox.path", "must name a file, not a directory"));
        }
        if self.max_bytes < u64::from(max_block_bytes) {
            return Err(bad(
                "outbox.max_bytes",
                "must hold at least one block (limits.max_block_bytes)",
            ));
        }
        if !(1..=4096).contains(&self.window_blocks) {
            return Err(bad("outbox.window_blocks", "must be between 1 and 4096"));
        }
        Ok(())
    }
}

fn default_outbox_path() -> PathBuf {
    PathBuf::from("/var/lib/weir/rx-outbox.redb")
}
fn default_outbox_max_bytes() -> u64 {
    1 << 30
}
fn default_retain_acked() -> Duration {
    Duration::from_secs(10)
}
fn default_outbox_window() -> usize {
    16
}

/// `[link]` of the receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RxLink {
    /// Address to receive datagrams on.
    pub listen: SocketAddr,
    /// Requested socket receive buffer.
    #[serde(default = "default_rcvbuf")]
    pub recv_buffer_bytes: usize,
    /// The link is reported down after this long without a heartbeat.
    #[serde(default = "default_link_timeout", with = "humantime_serde")]
    pub link_timeout: Duration,
}

/// `[keys]` of the receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RxKeys {
    /// Key files to load; any of them is accepted.
    pub files: Vec<PathBuf>,
    /// Key ids refused even when a loaded file has them: the last step of
    /// a rotation, before the old key file is removed.
    #[serde(default)]
    pub retired_key_ids: Vec<u16>,
}

/// `[files]` of the receiver: where opaque files are assembled and put.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Finished files appear here, under their original names.
    pub output_dir: PathBuf,
    /// Where files are assembled (default `<output_dir>/.staging`); must be
    /// on the same filesystem as `output_dir`, so finishing is a rename.
    #[serde(default)]
    pub staging_dir: Option<PathBuf>,
    /// Most files being assembled at once.
    #[serde(default = "default_files_max_files")]
    pub max_files: usize,
    /// Most declared bytes of all files being assembled together.
    #[serde(default = "default_files_max_staging")]
    pub max_staging_bytes: u64,
    /// A file without a new byte for this long is given up as incomplete
    /// (lost blocks usually give it up sooner).
    #[serde(default = "default_files_incomplete", with = "humantime_serde")]
    pub incomplete_timeout: Duration,
}

fn default_files_max_files() -> usize {
    64
}
fn default_files_max_staging() -> u64 {
    16 << 30
}
fn default_files_incomplete() -> Duration {
    Duration::from_mins(5)
}

/// A validated `[files]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidFiles {
    /// Where finished files go.
    pub output_dir: PathBuf,
    /// Where files are assembled.
    pub staging_dir: PathBuf,
    /// Bounds and timeouts of the assembler.
    pub limits: FilesLimits,
}

fn valid_files(f: &FilesConfig, gap_timeout: Duration) -> Result<ValidFiles, ConfigError> {
    if f.output_dir.as_os_str().is_empty() {
        return Err(bad("files.output_dir", "must not be empty"));
    }
    let staging_dir = match &f.staging_dir {
        None => f.output_dir.join(".staging"),
        Some(p) if p.as_os_str().is_empty() => {
            return Err(bad("files.staging_dir", "must not be empty"));
        }
        Some(p) if p == &f.output_dir => {
            return Err(bad(
                "files.staging_dir",
                "must differ from files.output_dir (half-written files would show)",
            ));
        }
        Some(p) => p.clone(),
    };
    if !(1..=100_000).contains(&f.max_files) {
        return Err(bad("files.max_files", "must be between 1 and 100000"));
    }
    if f.max_staging_bytes == 0 {
        return Err(bad("files.max_staging_bytes", "must be positive"));
    }
    if f.incomplete_timeout < gap_timeout {
        return Err(bad(
            "files.incomplete_timeout",
            "must be at least limits.gap_timeout",
        ));
    }
    Ok(ValidFiles {
        output_dir: f.output_dir.clone(),
        staging_dir,
        limits: FilesLimits {
            max_files: f.max_files,
            max_total_bytes: f.max_staging_bytes,
            incomplete_timeout: f.incomplete_timeout,
            // Once a block is declared lost, any other block that could hold
            // a file's missing bytes is resolved within a gap timeout.
            loss_settle: gap_timeout,
        },
    })
}

/// `[limits]` of the receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RxLimits {
    /// Largest sealed block accepted.
    pub max_block_bytes: u32,
    /// Blocks reassembled at once.
    pub max_pending_blocks: usize,
    /// A block not rebuilt within this time is dropped.
    #[serde(with = "humantime_serde")]
    pub block_timeout: Duration,
    /// A block known sent but not delivered within this time is lost.
    #[serde(with = "humantime_serde")]
    pub gap_timeout: Duration,
    /// Replay window, blocks per lane.
    pub window_blocks: u64,
    /// Sender sessions tracked at once.
    pub max_sessions: usize,
    /// Largest decompressed batch.
    pub max_batch_bytes: u32,
    /// Most records per batch.
    pub max_records: u32,
    /// Decoded blocks waiting for the outbox to commit them, bytes; a bulk
    /// block decoded beyond it is shed and reported as a gap (alert blocks
    /// never are).
    pub max_queued_bytes: u64,
    /// Threads that run RaptorQ solves beside the decode task; 0 solves on
    /// the decode task itself. Unset: none on a host of one or two cores
    /// (the decode task's core and one for the rest of the pipeline),
    /// else one per core less one.
    pub solve_workers: Option<u8>,
}

impl RxLimits {
    /// Solve threads for a host of `cores` cores ([`RxLimits::solve_workers`]).
    pub fn solve_workers_for(&self, cores: usize) -> usize {
        self.solve_workers.map_or_else(
            || {
                if cores <= 2 {
                    0
                } else {
                    (cores - 1).min(MAX_SOLVE_WORKERS)
                }
            },
            usize::from,
        )
    }
}

/// Most solve threads `limits.solve_workers` may ask for.
pub const MAX_SOLVE_WORKERS: usize = 16;

impl Default for RxLimits {
    fn default() -> Self {
        Self {
            max_block_bytes: 1024 * 1024,
            max_pending_blocks: 64,
            block_timeout: Duration::from_secs(5),
            gap_timeout: Duration::from_secs(10),
            window_blocks: 65_536,
            max_sessions: 16,
            max_batch_bytes: 64 * 1024 * 1024,
            max_records: 1_000_000,
            max_queued_bytes: 64 * 1024 * 1024,
            solve_workers: None,
        }
    }
}

/// `[mqtt]`: the broker and the topic contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Site name used in topics.
    #[serde(default = "default_site")]
    pub site: String,
    /// Gateway name used in gateway topics.
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// Point topic template: `{site}`, `{source}`, `{tag}` are replaced.
    #[serde(default = "default_point_topic")]
    pub point_topic: String,
    /// Unacknowledged QoS 1 publishes in flight at once.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Points per message: above 1, a block's points of one topic are sent
    /// as a JSON array of up to this many point objects.
    #[serde(default = "default_batch_points")]
    pub batch_points: usize,
    /// Also emit `ts_ms` (Unix milliseconds) in point payloads.
    #[serde(default)]
    pub ts_ms: bool,
    /// Keep-alive interval.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// TLS to the broker; without this table the connection is plain TCP.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// User name sent in CONNECT.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (mode 0600; one trailing newline is
    /// ignored). Never inline in the config: configs get copied around.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `[mqtt.tls]`: verify the broker against a private CA, optionally present
/// a client certificate (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file of the CA certificate(s) the broker's certificate must
    /// chain to. The system trust store is not used.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for brokers that require one; needs
    /// `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (mode 0600).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name the broker's certificate is checked against (and sent as SNI),
    /// when `mqtt.host` is not that name (an IP address, an alias).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl MqttConfig {
    /// The security keys: pairs that must come together, nothing empty.
    /// Whether the files exist and parse is the shell's check at startup.
    fn check_security(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.tls {
            if t.ca_file.as_os_str().is_empty() {
                return Err(bad("mqtt.tls.ca_file", "must name a PEM file"));
            }
            for (key, p) in [
                ("mqtt.tls.cert_file", &t.cert_file),
                ("mqtt.tls.key_file", &t.key_file),
            ] {
                if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(bad(key, "must name a PEM file"));
                }
            }
            match (t.cert_file.is_some(), t.key_file.is_some()) {
                (true, false) => {
                    return Err(bad("mqtt.tls.key_file", "needed with mqtt.tls.cert_file"));
                }
                (false, true) => {
                    return Err(bad("mqtt.tls.cert_file", "needed with mqtt.tls.key_file"));
                }
                _ => {}
            }
            if let Some(name) = &t.server_name
                && (name.is_empty()
                    || name.len() > 253
                    || name.contains(|c: char| c.is_whitespace() || c == '/'))
            {
                return Err(bad(
                    "mqtt.tls.server_name",
                    "must be a DNS name or IP address",
                ));
            }
        }
        if let Some(user) = &self.username
            && (user.is_empty() || user.len() > usize::from(u16::MAX) || user.contains('\0'))
        {
            return Err(bad("mqtt.username", "must be 1 to 65535 bytes without NUL"));
        }
        if let Some(p) = &self.password_file {
            if p.as_os_str().is_empty() {
                return Err(bad("mqtt.password_file", "must name a file"));
            }
            // MQTT 3.1.1 (3.1.2.9): no password without a user name.
            if self.username.is_none() {
                return Err(bad("mqtt.password_file", "needs mqtt.username"));
            }
        }
        Ok(())
    }
}

fn default_rcvbuf() -> usize {
    8 * 1024 * 1024
}
fn default_link_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "weir-rx".into()
}
fn default_site() -> String {
    "site".into()
}
fn default_gateway() -> String {
    "weir".into()
}
fn default_point_topic() -> String {
    "uns/v1/{site}/_unmapped/{source}/{tag}".into()
}
impl MqttConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let m = self;
        if m.host.is_empty() {
            return Err(bad("mqtt.host", "must not be empty"));
        }
        // The bulk session adds `-bulk` to it (and Sparkplug `-spb`).
        if m.client_id.is_empty() || m.client_id.len() > 59 {
            return Err(bad("mqtt.client_id", "must be 1 to 59 characters"));
        }
        if !topic_segment_ok(&m.site) {
            return Err(bad(
                "mqtt.site",
                "must be one topic segment without / + # or a leading $",
            ));
        }
        if !topic_segment_ok(&m.gateway) {
            return Err(bad(
                "mqtt.gateway",
                "must be one topic segment without / + # or a leading $",
            ));
        }
        if !m.point_topic.contains("{tag}")
            || m.point_topic.contains(['+', '#'])
            || m.point_topic.starts_with('$')
        {
            return Err(bad(
                "mqtt.point_topic",
                "must contain {tag} and no wildcard or leading $",
            ));
        }
        if m.inflight == 0 {
            return Err(bad("mqtt.inflight", "must be positive"));
        }
        if !(1..=10_000).contains(&m.batch_points) {
            return Err(bad("mqtt.batch_points", "must be between 1 and 10000"));
        }
        Ok(())
    }
}

fn default_batch_points() -> usize {
    1
}
fn default_inflight() -> u16 {
    100
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// A validated receiver configuration.
#[derive(Debug, Clone)]
pub struct ValidRx {
    /// The configuration as read.
    pub raw: RxConfig,
    /// Reassembly bounds.
    pub reassembly: ReassemblyLimits,
    /// Record decode bounds.
    pub decode: DecodeLimits,
    /// File output, when `[files]` is configured.
    pub files: Option<ValidFiles>,
    /// Where to serve Prometheus metrics (`[metrics]`); `None`: off.
    pub metrics: Option<SocketAddr>,
}

fn topic_segment_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0']) && !s.starts_with('$')
}

impl RxConfig {
    /// Check every value and compute derived limits.
    pub fn validate(self) -> Result<ValidRx, ConfigError> {
        if self.link.listen.port() == 0 {
            return Err(bad("link.listen", "needs a port"));
        }
        if self.keys.files.is_empty() {
            return Err(bad("keys.files", "name at least one key file"));
        }
        let l = &self.limits;
        if !(1024..=1 << 30).contains(&l.max_block_bytes) {
            return Err(bad(
                "limits.max_block_bytes",
                "must be between 1 KiB and 1 GiB",
            ));
        }
        if !(1..=1_000_000).contains(&l.max_pending_blocks) {
            return Err(bad(
                "limits.max_pending_blocks",
                "must be between 1 and 1000000",
            ));
        }
        if l.block_timeout.is_zero() {
            return Err(bad("limits.block_timeout", "must be positive"));
        }
        if l.gap_timeout < l.block_timeout {
            return Err(bad(
                "limits.gap_timeout",
                "must be at least limits.block_timeout",
            ));
        }
        if !(64..=1 << 24).contains(&l.window_blocks) {
            return Err(bad(
                "limits.window_blocks",
                "must be between 64 and 16777216",
            ));
        }
        if !(1..=4096).contains(&l.max_sessions) {
            return Err(bad("limits.max_sessions", "must be between 1 and 4096"));
        }
        if l.max_batch_bytes < 1024 {
            return Err(bad("limits.max_batch_bytes", "must be at least 1 KiB"));
        }
        if l.max_records == 0 {
            return Err(bad("limits.max_records", "must be positive"));
        }
        if !(u64::from(l.max_block_bytes)..=1 << 32).contains(&l.max_queued_bytes) {
            return Err(bad(
                "limits.max_queued_bytes",
                "must hold one block (limits.max_block_bytes) and be at most 4 GiB",
            ));
        }
        if l.solve_workers
            .is_some_and(|w| usize::from(w) > MAX_SOLVE_WORKERS)
        {
            return Err(bad("limits.solve_workers", "must be at most 16"));
        }
        self.mqtt.check()?;
        self.mqtt.check_security()?;
        self.outbox.check(l.max_block_bytes)?;
        self.ledger.check()?;
        self.audit.validate()?;
        if let Some(sparkplug) = &self.sparkplug {
            sparkplug.validate()?;
        }
        let metrics = self.metrics.validate()?;
        let reassembly = ReassemblyLimits {
            max_block_bytes: l.max_block_bytes,
            max_pending_blocks: l.max_pending_blocks,
            block_timeout: l.block_timeout,
            gap_timeout: l.gap_timeout,
            window_blocks: l.window_blocks,
            max_sessions: l.max_sessions,
        };
        let decode = DecodeLimits {
            max_body_bytes: l.max_batch_bytes,
            max_records: l.max_records,
        };
        let files = self
            .files
            .as_ref()
            .map(|f| valid_files(f, l.gap_timeout))
            .transpose()?;
        Ok(ValidRx {
            raw: self,
            reassembly,
            decode,
            files,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_size_for_default_mtu_is_1408() {
        // 1500 - 28 (IPv4, UDP) - 62 (header, datagram tag, CRC) = 1410,
        // rounded down to the RaptorQ alignment: the datagram stays 1470.
        assert_eq!(symbol_size_for_mtu(1500, false), Some(1408));
        assert_eq!(symbol_size_for_mtu(1500, true), Some(1384));
        assert_eq!(symbol_size_for_mtu(9000, false), Some(8904));
        assert_eq!(symbol_size_for_mtu(154, false), Some(64));
        assert_eq!(symbol_size_for_mtu(153, false), None);
        assert_eq!(symbol_size_for_mtu(100, false), None);
    }

    fn tx() -> TxConfig {
        TxConfig {
            link: TxLink {
                destination: "127.0.0.1:4000".parse().expect("addr"),
                bind: default_bind(),
                mtu_bytes: 1500,
                rate_mbps: 100.0,
                burst_datagrams: None,
                heartbeat_interval: Duration::from_secs(1),
            },
            keys: TxKeys {
                files: vec!["k".into()],
                active_key_id: 1,
            },
            lanes: TxLanes::default(),
            spools: vec![],
            syslogs: vec![],
            follows: vec![],
            alert_queue: AlertQueueConfig::default(),
            sender: SenderConfig::default(),
            metrics: MetricsConfig::default(),
            audit: AuditConfig::default(),
        }
    }

    #[test]
    fn an_unset_burst_holds_three_milliseconds_of_the_rate() {
        let burst = |rate: f64, set: Option<u16>| {
            let mut c = tx();
            c.link.rate_mbps = rate;
            c.link.burst_datagrams = set;
            c.validate().map(|v| v.burst_datagrams).map_err(|e| e.key)
        };
        // 1470-byte datagrams at MTU 1500: 1 Gbit/s is 85 per millisecond.
        assert_eq!(burst(1000.0, None), Ok(255));
        assert_eq!(burst(100.0, None), Ok(25));
        assert_eq!(burst(10.0, None), Ok(16), "never below 16");
        assert_eq!(burst(100_000.0, None), Ok(256), "never above 256");
        assert_eq!(burst(1000.0, Some(16)), Ok(16), "a set burst is kept");
        assert_eq!(burst(1000.0, Some(0)), Err("link.burst_datagrams"));
        assert_eq!(burst(1000.0, Some(1025)), Err("link.burst_datagrams"));
    }

    #[test]
    fn metrics_listen_is_optional_and_checked_by_key() {
        assert_eq!(tx().validate().expect("valid").metrics, None);
        let with = |listen: &str| {
            let mut c = tx();
            c.metrics.listen = listen.into();
            c.validate().map(|v| v.metrics).map_err(|e| e.key)
        };
        assert_eq!(with(""), Ok(None));
        assert_eq!(
            with("127.0.0.1:9464"),
            Ok(Some("127.0.0.1:9464".parse().expect("addr")))
        );
        assert_eq!(with("[::1]:9464").map(|a| a.is_some()), Ok(true));
        for bad in ["localhost:9464", "127.0.0.1", "127.0.0.1:0", ":9464"] {
            assert_eq!(with(bad), Err("metrics.listen"), "{bad}");
        }
        let parsed: MetricsConfig =
            serde_json::from_str(r#"{"listen": "0.0.0.0:9465"}"#).expect("parses");
        assert_eq!(
            parsed.validate().map(|a| a.map(|a| a.port())),
            Ok(Some(9465))
        );
        assert!(serde_json::from_str::<MetricsConfig>(r#"{"listn": "0.0.0.0:9465"}"#).is_err());
    }

    #[test]
    fn repeat_keys_are_checked_and_named() {
        let v = tx().validate().expect("valid");
        assert!(v.lanes.iter().all(|l| l.repeat_after.is_none()));
        let mut c = tx();
        c.lanes.bulk.repeat_after = Duration::from_secs(3);
        let v = c.validate().expect("valid");
        assert_eq!(
            v.lanes[Lane::Bulk.index()].repeat_after,
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            v.lanes[Lane::Bulk.index()].repeat_buffer_bytes,
            64 * 1024 * 1024
        );
        let key = |c: TxConfig| c.validate().map(|_| ()).map_err(|e| e.key);
        let mut c = tx();
        c.lanes.bulk.repeat_after = Duration::from_millis(1);
        assert_eq!(key(c), Err("lanes.bulk.repeat_after"));
        let mut c = tx();
        c.lanes.alert.repeat_buffer_bytes = 1024;
        assert_eq!(key(c), Err("lanes.alert.repeat_buffer_bytes"));
        // Off, a small buffer is fine; on, it must hold the largest block.
        let mut c = tx();
        c.lanes.bulk.repeat_buffer_bytes = 256 * 1024;
        assert!(c.clone().validate().is_ok());
        c.lanes.bulk.repeat_after = Duration::from_secs(1);
        assert_eq!(key(c), Err("lanes.bulk.repeat_buffer_bytes"));
    }

    #[test]
    fn tx_errors_name_the_key() {
        assert!(tx().validate().is_ok());
        let mut c = tx();
        c.link.mtu_bytes = 60;
        assert_eq!(
            c.validate().map(|_| ()).map_err(|e| e.key),
            Err("link.mtu_bytes")
        );
        let mut c = tx();
        c.lanes.bulk.repair_ratio = -1.0;
        assert_eq!(
            c.validate().map(|_| ()).map_err(|e| e.key),
            Err("lanes.bulk.repair_ratio")
        );
        let mut c = tx();
        c.link.rate_mbps = f64::NAN;
        assert_eq!(
            c.validate().map(|_| ()).map_err(|e| e.key),
            Err("link.rate_mbps")
        );
        let mut c = tx();
        c.keys.files.clear();
        assert_eq!(
            c.validate().map(|_| ()).map_err(|e| e.key),
            Err("keys.files")
        );
    }

    #[test]
    fn solve_workers_leave_two_cores_alone_unless_set() {
        let auto = RxLimits::default();
        assert_eq!(
            [1, 2, 3, 4, 64].map(|c| auto.solve_workers_for(c)),
            [0, 0, 2, 3, MAX_SOLVE_WORKERS]
        );
        let set = RxLimits {
            solve_workers: Some(2),
            ..RxLimits::default()
        };
        assert_eq!(set.solve_workers_for(2), 2);
    }

    #[test]
    fn alert_queue_defaults_and_keys_are_checked() {
        let q: AlertQueueConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(q.path, default_alert_queue_path());
        assert_eq!(q.max_bytes, 64 * 1024 * 1024);
        assert!(
            serde_json::from_str::<AlertQueueConfig>(r#"{"dir": "/x"}"#).is_err(),
            "unknown key"
        );
        let key = |c: TxConfig| c.validate().map(|_| ()).map_err(|e| e.key);
        let mut c = tx();
        c.alert_queue.path = PathBuf::new();
        assert_eq!(key(c), Err("alert_queue.path"));
        let mut c = tx();
        c.alert_queue.path = "/".into();
        assert_eq!(key(c), Err("alert_queue.path"));
        let mut c = tx();
        c.alert_queue.max_bytes = 1024;
        assert_eq!(key(c), Err("alert_queue.max_bytes"));
        let mut c = tx();
        c.alert_queue = AlertQueueConfig {
            path: "/tmp/q.redb".into(),
            max_bytes: 1024 * 1024,
        };
        assert_eq!(key(c), Ok(()));
    }

    fn spool(format: crate::formats::Format) -> SpoolConfig {
        SpoolConfig {
            name: "s".into(),
            backfill: false,
            dir: "d".into(),
            kind: SpoolKind::Historian,
            format: Some(format),
            chunk_bytes: None,
            tz: None,
            tag: None,
            discrete_tags: vec![],
            max_file_bytes: default_max_file(),
            on_done: default_on_done(),
            scan_interval: default_scan(),
            tag_table: None,
            csv: None,
        }
    }

    fn spool_error(s: SpoolConfig) -> Result<(), &'static str> {
        let mut c = tx();
        c.spools = vec![s];
        c.validate().map(|_| ()).map_err(|e| e.key)
    }

    #[test]
    fn spool_format_keys_are_checked() {
        use crate::formats::{CsvMapping, Format, TsFormat};
        for f in Format::ALL {
            let mut s = spool(f);
            s.tz = Some("America/Chicago".into());
            s.tag_table = (f == Format::Ignition).then(|| "sqlth_te.csv".into());
            s.csv = (f == Format::GenericCsv).then(|| CsvMapping {
                tag: "t".into(),
                timestamp: "ts".into(),
                value: "v".into(),
                quality: None,
                unit: None,
                ts_format: TsFormat::Pattern("%Y-%m-%d %H:%M:%S".into()),
                delimiter: b',',
            });
            assert_eq!(spool_error(s.clone()), Ok(()), "{f}");
            s.tz = None;
            let tz_needed = f.local_time() || f == Format::GenericCsv;
            assert_eq!(
                spool_error(s),
                if tz_needed { Err("spool.tz") } else { Ok(()) },
                "{f}"
            );
        }
        assert_eq!(spool_error(spool(Format::Ignition)), Err("spool.tag_table"));
        assert_eq!(spool_error(spool(Format::GenericCsv)), Err("spool.csv"));
        let mut s = spool(Format::OpcUa);
        s.tag_table = Some("x".into());
        assert_eq!(spool_error(s), Err("spool.tag_table"));
        let mut s = spool(Format::GenericCsv);
        s.csv = Some(CsvMapping {
            tag: "t".into(),
            timestamp: "t".into(),
            value: "v".into(),
            quality: None,
            unit: None,
            ts_format: TsFormat::EpochMs,
            delimiter: b',',
        });
        assert_eq!(spool_error(s), Err("spool.csv.tag"));
    }

    #[test]
    fn files_spool_keys_are_checked() {
        use crate::formats::Format;
        let files = || SpoolConfig {
            kind: SpoolKind::Files,
            format: None,
            ..spool(Format::Aveva)
        };
        assert_eq!(spool_error(files()), Ok(()));
        let mut s = spool(Format::Aveva);
        s.tz = Some("UTC".into());
        s.format = None;
        assert_eq!(spool_error(s.clone()), Err("spool.format"));
        s.format = Some(Format::Aveva);
        s.chunk_bytes = Some(1024);
        assert_eq!(spool_error(s), Err("spool.chunk_bytes"));
        let mut s = files();
        s.format = Some(Format::Aveva);
        assert_eq!(spool_error(s), Err("spool.format"));
        let mut s = files();
        s.tz = Some("UTC".into());
        assert_eq!(spool_error(s), Err("spool.tz"));
        let mut s = files();
        s.discrete_tags = vec!["x".into()];
        assert_eq!(spool_error(s), Err("spool.discrete_tags"));
        // The default bulk batch is 256 KiB: a chunk must leave 1 KiB spare.
        let bulk = LaneConfig::bulk_default().max_batch_bytes;
        for (chunk, ok) in [
            (0, false),
            (1, true),
            (bulk - FILE_CHUNK_OVERHEAD, true),
            (bulk - FILE_CHUNK_OVERHEAD + 1, false),
            (u32::MAX, false),
        ] {
            let mut s = files();
            s.chunk_bytes = Some(chunk);
            let want = if ok { Ok(()) } else { Err("spool.chunk_bytes") };
            assert_eq!(spool_error(s), want, "{chunk}");
        }
        // The default chunk does not fit a small bulk lane.
        let mut c = tx();
        c.lanes.bulk.max_batch_bytes = 32 * 1024;
        c.spools = vec![files()];
        assert_eq!(
            c.validate().map(|_| ()).map_err(|e| e.key),
            Err("spool.chunk_bytes")
        );
    }

    #[test]
    fn spool_kind_defaults_to_historian_and_format_is_optional() {
        let historian: SpoolConfig =
            serde_json::from_str(r#"{"name": "a", "dir": "/s", "format": "aveva-csv"}"#)
                .expect("historian");
        assert_eq!(historian.kind, SpoolKind::Historian);
        assert_eq!(historian.format, Some(crate::formats::Format::Aveva));
        let files: SpoolConfig = serde_json::from_str(
            r#"{"name": "f", "dir": "/s", "kind": "files", "chunk_bytes": 4096}"#,
        )
        .expect("files");
        assert_eq!(files.kind, SpoolKind::Files);
        assert_eq!((files.format, files.chunk_size()), (None, 4096));
        assert!(
            serde_json::from_str::<SpoolConfig>(r#"{"name": "f", "dir": "/s", "kind": "blobs"}"#)
                .is_err()
        );
    }

    #[test]
    fn rx_errors_name_the_key() {
        let c = RxConfig {
            link: RxLink {
                listen: "127.0.0.1:4000".parse().expect("addr"),
                recv_buffer_bytes: 1 << 20,
                link_timeout: Duration::from_secs(3),
            },
            keys: RxKeys {
                files: vec!["k".into()],
                retired_key_ids: Vec::new(),
            },
            limits: RxLimits::default(),
            mqtt: MqttConfig {
                host: "127.0.0.1".into(),
                port: 1883,
                client_id: "x".into(),
                site: "plant1".into(),
                gateway: "gw".into(),
                point_topic: default_point_topic(),
                inflight: 10,
                batch_points: 1,
                ts_ms: false,
                keep_alive: Duration::from_secs(5),
                tls: None,
                username: None,
                password_file: None,
            },
            outbox: OutboxConfig::default(),
            ledger: LedgerConfig::default(),
            dq: crate::dq::DqConfig::default(),
            files: None,
            sparkplug: None,
            metrics: MetricsConfig::default(),
            audit: AuditConfig::default(),
        };
        assert!(c.clone().validate().is_ok());
        assert_eq!(
            c.audit_path(),
            std::path::PathBuf::from("/var/lib/weir/rx-audit.jsonl")
        );
        let mut bad_audit = c.clone();
        bad_audit.audit.path = Some("/".into());
        assert_eq!(
            bad_audit
                .validate()
                .map(|_| ())
                .expect_err("audit.path")
                .key,
            "audit.path"
        );
        let mut bad_listen = c.clone();
        bad_listen.metrics.listen = "127.0.0.1:x".into();
        assert_eq!(
            bad_listen.validate().map(|_| ()).map_err(|e| e.key),
            Err("metrics.listen")
        );
        let mut s = c.clone();
        s.sparkplug = Some(crate::sparkplug::SparkplugConfig::new("plant1", "gw/01"));
        assert_eq!(
            s.validate().map(|_| ()).map_err(|e| e.key),
            Err("sparkplug.edge_node_id")
        );
        let mut queue = c.clone();
        queue.limits.max_queued_bytes = u64::from(queue.limits.max_block_bytes) - 1;
        assert_eq!(
            queue.validate().map(|_| ()).map_err(|e| e.key),
            Err("limits.max_queued_bytes")
        );
        let mut solve = c.clone();
        solve.limits.solve_workers = Some(17);
        assert_eq!(
            solve.validate().map(|_| ()).map_err(|e| e.key),
            Err("limits.solve_workers")
        );
        let mut o = c.clone();
        o.outbox.max_bytes = 10;
        assert_eq!(
            o.validate().map(|_| ()).map_err(|e| e.key),
            Err("outbox.max_bytes")
        );
        let mut b = c.clone();
        b.mqtt.site = "a/b".into();
        assert_eq!(
            b.validate().map(|_| ()).map_err(|e| e.key),
            Err("mqtt.site")
        );
        let mut b = c;
        b.limits.gap_timeout = Duration::from_millis(1);
        assert_eq!(
            b.validate().map(|_| ()).map_err(|e| e.key),
            Err("limits.gap_timeout")
        );
    }

    fn rx_with_files(files: &str) -> Result<ValidRx, ConfigError> {
        let text = format!(
            r#"{{"link": {{"listen": "127.0.0.1:4000"}}, "keys": {{"files": ["k"]}},
                "mqtt": {{"host": "h"}}, "limits": {{"gap_timeout": "10s"}}, "files": {files}}}"#
        );
        let c: RxConfig = serde_json::from_str(&text).expect("rx config parses");
        c.validate()
    }

    #[test]
    fn rx_files_keys_are_checked() {
        let v = rx_with_files(r#"{"output_dir": "/srv/in"}"#).expect("minimal [files]");
        let f = v.files.expect("files configured");
        assert_eq!(f.staging_dir, PathBuf::from("/srv/in/.staging"));
        assert_eq!(f.limits.max_files, 64);
        assert_eq!(f.limits.loss_settle, Duration::from_secs(10));
        assert_eq!(f.limits.incomplete_timeout, Duration::from_mins(5));
        let f = rx_with_files(
            r#"{"output_dir": "/srv/in", "staging_dir": "/srv/stage", "max_files": 3,
                "max_staging_bytes": 1000, "incomplete_timeout": "30s"}"#,
        )
        .expect("full [files]")
        .files
        .expect("files");
        assert_eq!(f.staging_dir, PathBuf::from("/srv/stage"));
        assert_eq!(f.limits.max_total_bytes, 1000);
        for (files, key) in [
            (r#"{"output_dir": ""}"#, "files.output_dir"),
            (
                r#"{"output_dir": "/a", "staging_dir": "/a"}"#,
                "files.staging_dir",
            ),
            (r#"{"output_dir": "/a", "max_files": 0}"#, "files.max_files"),
            (
                r#"{"output_dir": "/a", "max_staging_bytes": 0}"#,
                "files.max_staging_bytes",
            ),
            (
                r#"{"output_dir": "/a", "incomplete_timeout": "9s"}"#,
                "files.incomplete_timeout",
            ),
        ] {
            assert_eq!(
                rx_with_files(files).map(|_| ()).map_err(|e| e.key),
                Err(key),
                "{files}"
            );
        }
        // Unknown keys are refused; without the table, files are off.
        let text = r#"{"link": {"listen": "127.0.0.1:4000"}, "keys": {"files": ["k"]},
            "mqtt": {"host": "h"}, "files": {"output_dir": "/a", "outptu": 1}}"#;
        assert!(serde_json::from_str::<RxConfig>(text).is_err());
        let text = r#"{"link": {"listen": "127.0.0.1:4000"}, "keys": {"files": ["k"]},
            "mqtt": {"host": "h"}}"#;
        let c: RxConfig = serde_json::from_str(text).expect("parses");
        assert!(c.validate().expect("valid").files.is_none());
    }

    fn rx_with_mqtt(mqtt: &str) -> Result<ValidRx, ConfigError> {
        let text = format!(
            r#"{{"link": {{"listen": "127.0.0.1:4000"}}, "keys": {{"files": ["k"]}},
                "mqtt": {mqtt}}}"#
        );
        let c: RxConfig = serde_json::from_str(&text).expect("rx config parses");
        c.validate()
    }

    #[test]
    fn mqtt_security_keys_parse_and_default_off() {
        let v = rx_with_mqtt(r#"{"host": "h"}"#).expect("plain");
        assert!(v.raw.mqtt.tls.is_none());
        assert!(v.raw.mqtt.username.is_none() && v.raw.mqtt.password_file.is_none());
        let v = rx_with_mqtt(
            r#"{"host": "10.0.0.5", "port": 8883, "username": "weir",
                "password_file": "/etc/weir/mqtt.pass",
                "tls": {"ca_file": "/etc/weir/ca.pem", "cert_file": "/etc/weir/rx.pem",
                        "key_file": "/etc/weir/rx.key", "server_name": "broker.example"}}"#,
        )
        .expect("full security");
        let m = v.raw.mqtt;
        let t = m.tls.expect("tls");
        assert_eq!(t.ca_file, PathBuf::from("/etc/weir/ca.pem"));
        assert_eq!(t.cert_file, Some(PathBuf::from("/etc/weir/rx.pem")));
        assert_eq!(t.key_file, Some(PathBuf::from("/etc/weir/rx.key")));
        assert_eq!(t.server_name.as_deref(), Some("broker.example"));
        assert_eq!(m.username.as_deref(), Some("weir"));
        assert_eq!(m.password_file, Some(PathBuf::from("/etc/weir/mqtt.pass")));
        // CA only (server-authenticated TLS), and a user without password.
        assert!(rx_with_mqtt(r#"{"host": "h", "tls": {"ca_file": "/ca.pem"}}"#).is_ok());
        assert!(rx_with_mqtt(r#"{"host": "h", "username": "u"}"#).is_ok());
        // Unknown keys are refused, and an inline password is not a key.
        for mqtt in [
            r#"{"host": "h", "tls": {"ca_file": "/ca.pem", "cafile": "/x"}}"#,
            r#"{"host": "h", "tls": {"cert_file": "/c.pem"}}"#,
            r#"{"host": "h", "username": "u", "password": "secret"}"#,
        ] {
            let text = format!(
                r#"{{"link": {{"listen": "127.0.0.1:4000"}}, "keys": {{"files": ["k"]}},
                    "mqtt": {mqtt}}}"#
            );
            assert!(serde_json::from_str::<RxConfig>(&text).is_err(), "{mqtt}");
        }
    }

    #[test]
    fn mqtt_security_errors_name_the_key() {
        for (mqtt, key) in [
            (
                r#"{"host": "h", "tls": {"ca_file": ""}}"#,
                "mqtt.tls.ca_file",
            ),
            (
                r#"{"host": "h", "tls": {"ca_file": "/ca", "cert_file": "/c"}}"#,
                "mqtt.tls.key_file",
            ),
            (
                r#"{"host": "h", "tls": {"ca_file": "/ca", "key_file": "/k"}}"#,
                "mqtt.tls.cert_file",
            ),
            (
                r#"{"host": "h", "tls": {"ca_file": "/ca", "cert_file": "", "key_file": "/k"}}"#,
                "mqtt.tls.cert_file",
            ),
            (
                r#"{"host": "h", "tls": {"ca_file": "/ca", "server_name": ""}}"#,
                "mqtt.tls.server_name",
            ),
            (
                r#"{"host": "h", "tls": {"ca_file": "/ca", "server_name": "a b"}}"#,
                "mqtt.tls.server_name",
            ),
            (r#"{"host": "h", "username": ""}"#, "mqtt.username"),
            (
                r#"{"host": "h", "password_file": "/p"}"#,
                "mqtt.password_file",
            ),
            (
                r#"{"host": "h", "username": "u", "password_file": ""}"#,
                "mqtt.password_file",
            ),
        ] {
            assert_eq!(
                rx_with_mqtt(mqtt).map(|_| ()).map_err(|e| e.key),
                Err(key),
                "{mqtt}"
            );
        }
    }
}
