//! The record model: what crosses the diode inside a sealed block.
//!
//! A block's plaintext is a *batch frame*: a small hand-written header
//! (version, codec, decoded length) followed by the postcard encoding of a
//! [`Batch`], optionally zstd-compressed. postcard is not self-describing, so
//! the frame version is the compatibility switch: a receiver refuses a frame
//! version it does not know instead of misreading it.
//!
//! Every decode is bounded by [`DecodeLimits`]: the declared length is checked
//! before anything is allocated, zstd stops at the declared length, and
//! postcard refuses (rather than allocates) a length prefix longer than the
//! remaining input.

use serde::{Deserialize, Serialize};

/// Batch frame version understood by this build.
pub const FRAME_VERSION: u8 = 1;
/// Frame header: version (1), codec (1), decoded body length (4, big-endian).
pub const FRAME_HEADER_LEN: usize = 6;

/// One historian sample, normalised but lossless: the native tag, the raw
/// timestamp text and the native quality travel beside the normalised fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Per-stream sequence number assigned by the sender.
    pub seq: u64,
    /// Tag name exactly as the source spelled it.
    pub tag: String,
    /// Source timestamp, nanoseconds since the Unix epoch, UTC.
    pub ts_ns: i64,
    /// The value.
    pub value: Value,
    /// Canonical quality: an OPC UA StatusCode.
    pub status: u32,
    /// The quality as the source expressed it.
    pub native_quality: NativeQuality,
    /// Engineering unit, when the source names one.
    pub unit: Option<String>,
    /// Where the sample came from.
    pub source: SourceRef,
    /// Timestamp as written in the source, when it had to be interpreted
    /// (local wall-clock time, a non-RFC 3339 layout).
    pub ts_raw: Option<String>,
    /// How a local wall-clock time was resolved to UTC.
    pub ts_resolution: TsResolution,
    /// Flags carried from the source.
    pub flags: PointFlags,
    /// Columns or attributes the parser did not map, kept losslessly.
    pub attrs: Vec<(String, String)>,
}

impl Point {
    /// A Good point of `system` with a tag, a time and a value, and nothing
    /// else (no unit, native quality, raw time or attributes; sequence 0).
    /// The fields are public: adjust the rest with struct update syntax.
    pub fn new(system: SourceSystem, tag: impl Into<String>, ts_ns: i64, value: Value) -> Self {
        Self {
            seq: 0,
            tag: tag.into(),
            ts_ns,
            value,
            status: 0,
            native_quality: NativeQuality::None,
            unit: None,
            source: SourceRef {
                system,
                file: None,
                line: None,
            },
            ts_raw: None,
            ts_resolution: TsResolution::Exact,
            flags: PointFlags::default(),
            attrs: Vec::new(),
        }
    }
}

/// A point value. Numbers keep their native width class; digital states
/// keep both code and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// No value (typically a Bad sample).
    Null,
    /// Boolean / discrete.
    Bool(bool),
    /// Signed integer.
    I64(i64),
    /// Unsigned integer.
    U64(u64),
    /// Floating point.
    F64(f64),
    /// Text.
    Str(String),
    /// A digital or system state (PI `{Name, Value, IsSystem}`).
    DigitalState {
        /// State code.
        code: i32,
        /// State name.
        name: String,
        /// Whether it is a SYSTEM state (an error state, not a process value).
        system: bool,
    },
}

/// The source's own quality encoding, kept beside the canonical StatusCode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NativeQuality {
    /// The source had no quality field.
    None,
    /// OPC DA quality byte (AVEVA `OPCQuality`, Ignition 7 `dataintegrity`).
    OpcDa(u16),
    /// OPC UA StatusCode as received.
    OpcUa(u32),
    /// PI Web API booleans.
    Pi {
        /// `Good`.
        good: bool,
        /// `Questionable`.
        questionable: bool,
        /// `Substituted`.
        substituted: bool,
        /// `Annotated`.
        annotated: bool,
    },
    /// AVEVA Historian `Quality`, `QualityDetail`, `OPCQuality`.
    Aveva {
        /// `Quality` (-1 none, 0 good, 1 bad, 16 doubtful).
        quality: i16,
        /// `QualityDetail`.
        detail: i32,
        /// `OPCQuality`, when present.
        opc: Option<u16>,
    },
    /// Free text (`Good`, `Bad`, `Uncertain`, …).
    Text(String),
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// The source system / export dialect.
    pub system: SourceSystem,
    /// Spool file name, when the record came from a file.
    pub file: Option<String>,
    /// 1-based line number in that file.
    pub line: Option<u64>,
}

/// Export dialects and alert sources Weir understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceSystem {
    /// PI Web API recorded-values JSON.
    PiWebApi,
    /// AVEVA (Wonderware) Historian History CSV.
    Aveva,
    /// PI piconfig / PIARC CSV.
    PiArc,
    /// Ignition tag-history CSV.
    Ignition,
    /// GE Proficy File-collector CSV.
    Proficy,
    /// InfluxDB line protocol.
    InfluxLp,
    /// OPC UA HistoryRead JSON lines.
    OpcUa,
    /// Generic CSV with a configured column mapping.
    GenericCsv,
    /// Anything else.
    Other,
}

impl SourceSystem {
    /// Short, topic-safe name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PiWebApi => "pi",
            Self::Aveva => "aveva",
            Self::PiArc => "piarc",
            Self::Ignition => "ignition",
            Self::Proficy => "proficy",
            Self::InfluxLp => "influx",
            Self::OpcUa => "opcua",
            Self::GenericCsv => "csv",
            Self::Other => "other",
        }
    }
}

/// How a source timestamp was turned into UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TsResolution {
    /// The source gave UTC or an explicit offset.
    Exact,
    /// Local time with a single valid reading.
    Local,
    /// Local time in a DST fall-back hour, resolved to the earlier instant.
    AmbiguousEarlier,
    /// Local time in a DST fall-back hour, resolved to the later instant
    /// (the file had already passed through that hour once).
    AmbiguousLater,
    /// Local time inside a DST spring-forward gap, shifted forward.
    GapShifted,
}

/// Flags carried from the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct PointFlags {
    /// Back-filled history rather than live data.
    pub historical: bool,
    /// The value was substituted by an operator or a rule.
    pub substituted: bool,
    /// The sample carries an annotation.
    pub annotated: bool,
    /// The value was interpolated by the historian.
    pub interpolated: bool,
}

/// Where an alert came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertSource {
    /// Syslog, RFC 5424.
    Syslog5424,
    /// Syslog, RFC 3164 (BSD).
    Syslog3164,
    /// ArcSight CEF (inside syslog).
    Cef,
    /// Suricata EVE JSON.
    SuricataEve,
    /// OPC UA Alarms & Conditions event.
    OpcUaAc,
}

impl AlertSource {
    /// Short, topic-safe name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syslog5424 | Self::Syslog3164 => "syslog",
            Self::Cef => "cef",
            Self::SuricataEve => "suricata",
            Self::OpcUaAc => "opcua",
        }
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertKind {
    /// A process alarm (ISA-18.2 / OPC UA A&C).
    ProcessAlarm,
    /// A security detection (IDS, firewall).
    SecurityAlert,
    /// A system or application event.
    SystemEvent,
}

/// Network facts of a security alert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInfo {
    /// Source address.
    pub src_ip: Option<String>,
    /// Source port.
    pub src_port: Option<u16>,
    /// Destination address.
    pub dst_ip: Option<String>,
    /// Destination port.
    pub dst_port: Option<u16>,
    /// Transport protocol.
    pub proto: Option<String>,
    /// Application protocol.
    pub app_proto: Option<String>,
    /// Flow id.
    pub flow_id: Option<u64>,
}

/// The rule that fired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Generator id.
    pub gid: Option<u64>,
    /// Signature id.
    pub id: Option<String>,
    /// Revision.
    pub rev: Option<u64>,
    /// Name.
    pub name: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Action taken (allowed, blocked, …).
    pub action: Option<String>,
}

/// State of an alarm condition (OPC UA A&C, ISA-18.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct Condition {
    /// Condition name.
    pub name: String,
    /// ISA-18.2 state letter `A`..`I`.
    pub isa182: Option<char>,
    /// Active.
    pub active: bool,
    /// Acknowledged.
    pub acked: bool,
    /// Confirmed.
    pub confirmed: bool,
    /// Retain (false: the condition is closed).
    pub retain: bool,
    /// Shelving state text.
    pub shelving: Option<String>,
    /// Suppressed or shelved.
    pub suppressed_or_shelved: bool,
    /// Out of service.
    pub out_of_service: bool,
    /// Latched.
    pub latched: bool,
    /// Quality of the condition's input (OPC UA StatusCode).
    pub quality: u32,
    /// Operator comment.
    pub comment: Option<String>,
    /// Operator.
    pub user: Option<String>,
    /// Limit state (High, Low, …).
    pub limit_state: Option<String>,
}

/// Flags on how an alert was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertFlags {
    /// The message had no timestamp; `event_time_ns` is the receive time.
    pub no_source_timestamp: bool,
    /// The year was inferred (RFC 3164 has none).
    pub year_inferred: bool,
    /// The time zone came from configuration, not the message.
    pub tz_assumed: bool,
}

/// One alert or event, normalised, with its raw bytes kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Per-stream sequence number assigned by the sender.
    pub seq: u64,
    /// Source format.
    pub source: AlertSource,
    /// What it is about.
    pub kind: AlertKind,
    /// When it happened (ns UTC); the receive time when the message had none.
    pub event_time_ns: i64,
    /// When the sender received it (ns UTC).
    pub receive_time_ns: i64,
    /// Event id (OPC UA EventId, syslog MSGID, EVE flow id…).
    pub event_id: Option<String>,
    /// Severity normalised to 1–1000 (OPC UA scale).
    pub severity: u16,
    /// Severity as the source wrote it.
    pub severity_native: String,
    /// Syslog facility.
    pub facility: Option<u8>,
    /// Originating host.
    pub host: Option<String>,
    /// Application / tag.
    pub app: Option<String>,
    /// Process id.
    pub procid: Option<String>,
    /// Message id.
    pub msgid: Option<String>,
    /// Source object name (OPC UA SourceName).
    pub source_name: Option<String>,
    /// Alarm condition, for process alarms.
    pub condition: Option<Condition>,
    /// Network facts, for security alerts.
    pub net: Option<NetInfo>,
    /// Rule that fired, for security alerts.
    pub signature: Option<Signature>,
    /// Human-readable message.
    pub message: String,
    /// Structured data, flattened (`sdid.param`, CEF extension keys…).
    pub structured: Vec<(String, String)>,
    /// How it was read.
    pub flags: AlertFlags,
    /// The raw message (bounded by the listener's size limit).
    pub raw: Vec<u8>,
}

/// One chunk of an opaque file crossing byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    /// Per-stream sequence number assigned by the sender.
    pub seq: u64,
    /// Sender-unique id of the file transfer.
    pub file_id: u64,
    /// File name (a bare name; the receiver refuses paths).
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
    /// Offset of this chunk.
    pub offset: u64,
    /// Chunk index, 0-based.
    pub index: u32,
    /// Number of chunks in the file.
    pub chunks: u32,
    /// The bytes.
    #[serde(with = "byte_buf")]
    pub data: Vec<u8>,
}

/// A `Vec<u8>` field as one byte string rather than a sequence of `u8`.
///
/// postcard writes both the same way (a varint length, then the bytes), so
/// the wire format does not change; but serde's generic `Vec<u8>` path
/// goes element by element, which made decoding a file chunk the
/// receiver's largest single cost on a file transfer. Self-describing
/// formats (JSON) still read a sequence of numbers.
mod byte_buf {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                // The hint is untrusted: cap what it may reserve.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

/// A record in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A historian sample.
    Point(Point),
    /// An alert or event (boxed: alerts are rare and large, points are
    /// the hot path and stay small).
    Alert(Box<Alert>),
    /// A piece of an opaque file.
    FileChunk(FileChunk),
}

impl Record {
    /// Set the per-stream sequence number.
    pub fn set_seq(&mut self, seq: u64) {
        match self {
            Self::Point(p) => p.seq = seq,
            Self::Alert(a) => a.seq = seq,
            Self::FileChunk(c) => c.seq = seq,
        }
    }
}

/// What one block carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The records, in sender order.
    pub records: Vec<Record>,
}

/// How the frame body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// postcard, uncompressed.
    Plain = 0,
    /// postcard, then zstd.
    Zstd = 1,
}

/// Limits applied to every frame decode; they come from the receiver config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest decoded (decompressed) body accepted, in bytes.
    pub max_body_bytes: u32,
    /// Most records accepted in one batch.
    pub max_records: u32,
}

/// Why a frame could not be built or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Frame shorter than its header.
    #[error("frame truncated: {0} bytes")]
    Truncated(usize),
    /// Unknown frame version.
    #[error("unknown frame version {0}")]
    Version(u8),
    /// Unknown body codec.
    #[error("unknown frame codec {0}")]
    Codec(u8),
    /// Declared body length above the configured limit.
    #[error("declared body length {declared} above limit {limit}")]
    TooLarge {
        /// Declared length.
        declared: u32,
        /// Configured limit.
        limit: u32,
    },
    /// Decompressed length differs from the declared one.
    #[error("body length mismatch: declared {declared}, got {actual}")]
    LengthMismatch {
        /// Declared length.
        declared: u32,
        /// Actual decoded length.
        actual: usize,
    },
    /// zstd refused the body.
    #[error("zstd error")]
    Decompress,
    /// postcard refused the body.
    #[error("record decode error")]
    Decode,
    /// More records than the limit.
    #[error("{count} records above limit {limit}")]
    TooManyRecords {
        /// Records in the batch.
        count: usize,
        /// Configured limit.
        limit: u32,
    },
    /// The batch could not be encoded (it exceeds 4 GiB or a value refused).
    #[error("record encode error")]
    Encode,
}

/// Builds a batch frame record by record, so the batcher knows the
/// encoded size as it goes without encoding anything twice.
///
/// postcard encodes `Batch { records: Vec<Record> }` as a varint count
/// followed by the records back to back; the builder keeps the records'
/// bytes and writes the count when it finishes.
///
/// Compression is kept only where it pays: a body that zstd would shrink
/// by less than 1/32 goes plain, sparing the receiver the decompression;
/// after such a body the next is first tried on a sample of
/// [`PROBE_BYTES`], so a stream of incompressible data (encrypted or
/// already compressed files) costs a sample's compression per frame, not
/// a whole frame's.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    body: Vec<u8>,
    count: u64,
    framed: Vec<u8>,
    /// The compressor, kept across frames (a fresh context per frame costs
    /// more than compressing a small one), with its level.
    zstd: Option<Zstd>,
    /// The last body did not compress.
    incompressible: bool,
}

/// Bytes of a body compressed first when the previous one did not compress.
pub const PROBE_BYTES: usize = 32 * 1024;

/// A zstd compressor and its level.
struct Zstd {
    level: i32,
    cx: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Zstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zstd")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// True when `packed` bytes are worth the decompression of `plain` bytes.
fn worth(packed: usize, plain: usize) -> bool {
    packed + packed / 32 < plain
}

impl BatchBuilder {
    /// Append one record; returns its encoded size.
    pub fn push(&mut self, record: &Record) -> Result<usize, RecordError> {
        let before = self.body.len();
        let body = std::mem::take(&mut self.body);
        self.body = postcard::to_extend(record, body).map_err(|_| RecordError::Encode)?;
        self.count += 1;
        Ok(self.body.len() - before)
    }

    /// Take back the record just pushed, whose encoded size was `size`.
    pub fn pop_last(&mut self, size: usize) {
        if self.count > 0 && size <= self.body.len() {
            self.body.truncate(self.body.len() - size);
            self.count -= 1;
        }
    }

    /// Encoded bytes so far (without the count prefix).
    pub fn len_bytes(&self) -> usize {
        self.body.len()
    }

    /// Records so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether nothing was pushed since the last finish.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Write the frame into `out` (cleared first) and reset the builder.
    pub fn finish(
        &mut self,
        zstd_level: Option<i32>,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        self.framed.clear();
        let mut varint = [0u8; 10];
        let prefix =
            postcard::to_slice(&self.count, &mut varint).map_err(|_| RecordError::Encode)?;
        self.framed.extend_from_slice(prefix);
        self.framed.extend_from_slice(&self.body);
        let body_len = u32::try_from(self.framed.len()).map_err(|_| RecordError::Encode)?;
        out.clear();
        out.push(FRAME_VERSION);
        let packed = match zstd_level {
            Some(level) => self.compress(level, out)?,
            None => false,
        };
        if !packed {
            out.truncate(1);
            out.push(Codec::Plain as u8);
            out.extend_from_slice(&body_len.to_be_bytes());
            out.extend_from_slice(&self.framed);
        }
        self.body.clear();
        self.count = 0;
        Ok(())
    }

    /// Compress `framed` behind `out`'s version byte, codec and length;
    /// false (and `out` left to be overwritten) when it does not pay.
    fn compress(&mut self, level: i32, out: &mut Vec<u8>) -> Result<bool, RecordError> {
        let zstd = match &mut self.zstd {
            Some(z) if z.level == level => z,
            slot => slot.insert(Zstd {
                level,
                cx: zstd::bulk::Compressor::new(level).map_err(|_| RecordError::Encode)?,
            }),
        };
        let plain = &self.framed;
        if self.incompressible && plain.len() > 2 * PROBE_BYTES {
            let sample = &plain[..PROBE_BYTES];
            let mut probe = vec![0; zstd::zstd_safe::compress_bound(sample.len())];
            let n = zstd
                .cx
                .compress_to_buffer(sample, &mut probe[..])
                .map_err(|_| RecordError::Encode)?;
            if !worth(n, sample.len()) {
                return Ok(false);
            }
        }
        let head = out.len();
        out.push(Codec::Zstd as u8);
        let body_len = u32::try_from(plain.len()).map_err(|_| RecordError::Encode)?;
        out.extend_from_slice(&body_len.to_be_bytes());
        let at = out.len();
        out.resize(at + zstd::zstd_safe::compress_bound(plain.len()), 0);
        let n = zstd
            .cx
            .compress_to_buffer(plain.as_slice(), &mut out[at..])
            .map_err(|_| RecordError::Encode)?;
        out.truncate(at + n);
        self.incompressible = !worth(n, plain.len());
        if self.incompressible {
            out.truncate(head);
        }
        Ok(!self.incompressible)
    }
}

/// Encode a whole `batch` into `out` as a frame (`None`: uncompressed).
pub fn encode_frame(
    batch: &Batch,
    zstd_level: Option<i32>,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let mut b = BatchBuilder::default();
    for r in &batch.records {
        b.push(r)?;
    }
    b.finish(zstd_level, out)
}

thread_local! {
    /// A decompression context per thread, kept: making one per frame
    /// costs more than decompressing a small frame.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompress a zstd body into at most `declared` bytes. The output's
/// capacity bounds what zstd writes, so a decompression bomb ends here
/// with an error.
fn decompress(body: &[u8], declared: usize) -> Result<Vec<u8>, RecordError> {
    DCTX.with(|slot| {
        let mut slot = slot.borrow_mut();
        let d = match &mut *slot {
            Some(d) => d,
            none => {
                none.insert(zstd::bulk::Decompressor::new().map_err(|_| RecordError::Decompress)?)
            }
        };
        let mut plain = Vec::with_capacity(declared);
        d.decompress_to_buffer(body, &mut plain)
            .map_err(|_| RecordError::Decompress)?;
        Ok(plain)
    })
}

/// Decode a frame, within `limits`.
pub fn decode_frame(frame: &[u8], limits: DecodeLimits) -> Result<Batch, RecordError> {
    let (head, body) = frame
        .split_first_chunk::<FRAME_HEADER_LEN>()
        .ok_or(RecordError::Truncated(frame.len()))?;
    if head[0] != FRAME_VERSION {
        return Err(RecordError::Version(head[0]));
    }
    let declared = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
    if declared > limits.max_body_bytes {
        return Err(RecordError::TooLarge {
            declared,
            limit: limits.max_body_bytes,
        });
    }
    let batch: Batch = match head[1] {
        c if c == Codec::Plain as u8 => {
            if body.len() != declared as usize {
                return Err(RecordError::LengthMismatch {
                    declared,
                    actual: body.len(),
                });
            }
            postcard::from_bytes(body).map_err(|_| RecordError::Decode)?
        }
        c if c == Codec::Zstd as u8 => {
            let plain = decompress(body, declared as usize)?;
            if plain.len() != declared as usize {
                return Err(RecordError::LengthMismatch {
                    declared,
                    actual: plain.len(),
                });
            }
            postcard::from_bytes(&plain).map_err(|_| RecordError::Decode)?
        }
        other => return Err(RecordError::Codec(other)),
    };
    if batch.records.len() > limits.max_records as usize {
        return Err(RecordError::TooManyRecords {
            count: batch.records.len(),
            limit: limits.max_records,
        });
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    /// The byte-string encoding of `FileChunk::data` is byte for byte the
    /// sequence encoding it replaced, and JSON still round-trips.
    #[test]
    fn file_chunk_bytes_keep_their_wire_form() {
        #[derive(serde::Serialize)]
        struct Plain {
            seq: u64,
            file_id: u64,
            name: String,
            size: u64,
            mtime_ns: i64,
            sha256: [u8; 32],
            offset: u64,
            index: u32,
            chunks: u32,
            data: Vec<u8>,
        }
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let chunk = super::FileChunk {
            seq: 9,
            file_id: 3,
            name: "a.bin".into(),
            size: 1000,
            mtime_ns: -5,
            sha256: [7; 32],
            offset: 0,
            index: 0,
            chunks: 1,
            data: data.clone(),
        };
        let plain = Plain {
            seq: 9,
            file_id: 3,
            name: "a.bin".into(),
            size: 1000,
            mtime_ns: -5,
            sha256: [7; 32],
            offset: 0,
            index: 0,
            chunks: 1,
            data,
        };
        let wire = postcard::to_allocvec(&chunk).expect("encodes");
        assert_eq!(wire, postcard::to_allocvec(&plain).expect("encodes"));
        assert_eq!(
            postcard::from_bytes::<super::FileChunk>(&wire).expect("decodes"),
            chunk
        );
        let json = serde_json::to_string(&chunk).expect("json");
        assert_eq!(
            serde_json::from_str::<super::FileChunk>(&json).expect("json back"),
            chunk
        );
    }

    use super::*;

    fn point(seq: u64) -> Point {
        Point {
            seq,
            tag: "\\\\PISRV01\\TT101.PV".into(),
            ts_ns: 1_710_057_602_250_000_000,
            value: Value::F64(71.9),
            status: 0x4000_0000,
            native_quality: NativeQuality::Pi {
                good: true,
                questionable: true,
                substituted: false,
                annotated: false,
            },
            unit: Some("°C".into()),
            source: SourceRef {
                system: SourceSystem::PiWebApi,
                file: Some("a.json".into()),
                line: Some(4),
            },
            ts_raw: None,
            ts_resolution: TsResolution::Exact,
            flags: PointFlags::default(),
            attrs: vec![("k".into(), "v".into())],
        }
    }

    const LIMITS: DecodeLimits = DecodeLimits {
        max_body_bytes: 1 << 20,
        max_records: 10_000,
    };

    #[test]
    fn frame_roundtrips_with_and_without_zstd() {
        let batch = Batch {
            records: (0..100).map(|i| Record::Point(point(i))).collect(),
        };
        for level in [None, Some(1), Some(3)] {
            let mut out = Vec::new();
            encode_frame(&batch, level, &mut out).expect("encode");
            assert_eq!(decode_frame(&out, LIMITS), Ok(batch.clone()));
        }
    }

    #[test]
    fn declared_length_above_limit_is_refused_before_decompressing() {
        let batch = Batch {
            records: (0..100).map(|i| Record::Point(point(i))).collect(),
        };
        let mut out = Vec::new();
        encode_frame(&batch, Some(1), &mut out).expect("encode");
        let small = DecodeLimits {
            max_body_bytes: 64,
            max_records: 10_000,
        };
        assert!(matches!(
            decode_frame(&out, small),
            Err(RecordError::TooLarge { .. })
        ));
        let few = DecodeLimits {
            max_body_bytes: 1 << 20,
            max_records: 10,
        };
        assert!(matches!(
            decode_frame(&out, few),
            Err(RecordError::TooManyRecords { .. })
        ));
    }

    #[test]
    fn lying_declared_length_is_refused() {
        let batch = Batch {
            records: vec![Record::Point(point(1))],
        };
        let mut out = Vec::new();
        encode_frame(&batch, Some(1), &mut out).expect("encode");
        // Claim a shorter body than zstd will produce.
        out[2..6].copy_from_slice(&8u32.to_be_bytes());
        assert!(decode_frame(&out, LIMITS).is_err());
    }

    #[test]
    fn hostile_vec_length_prefix_fails_without_allocating() {
        // Plain frame whose body claims u32::MAX records.
        let body = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
        let mut frame = vec![FRAME_VERSION, Codec::Plain as u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        assert_eq!(decode_frame(&frame, LIMITS), Err(RecordError::Decode));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode_frame(&b, LIMITS);
        }
    }

    fn chunk_of(data: Vec<u8>) -> Record {
        Record::FileChunk(FileChunk {
            seq: 1,
            file_id: 1,
            name: "x.bin".into(),
            size: data.len() as u64,
            mtime_ns: 0,
            sha256: [0; 32],
            offset: 0,
            index: 0,
            chunks: 1,
            data,
        })
    }

    #[test]
    fn compression_is_kept_only_where_it_pays() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut noise = vec![0u8; 256 * 1024];
        rng.fill(&mut noise[..]);
        let text: Vec<u8> = b"2026-03-10 08:00:00,TT101.PV,71.9,Good\n"
            .iter()
            .copied()
            .cycle()
            .take(256 * 1024)
            .collect();
        let limits = DecodeLimits {
            max_body_bytes: 1 << 20,
            max_records: 10,
        };
        let mut b = BatchBuilder::default();
        let mut out = Vec::new();
        let mut frame = |b: &mut BatchBuilder, data: &[u8]| {
            b.push(&chunk_of(data.to_vec())).expect("push");
            b.finish(Some(1), &mut out).expect("finish");
            let back = decode_frame(&out, limits).expect("decodes");
            assert_eq!(back.records, vec![chunk_of(data.to_vec())]);
            (out[1], out.len())
        };
        let (codec, len) = frame(&mut b, &text);
        assert_eq!(codec, Codec::Zstd as u8);
        assert!(len < text.len() / 10, "text shrinks: {len}");
        // Noise goes plain, first after a whole try, then after a sample.
        for _ in 0..2 {
            let (codec, len) = frame(&mut b, &noise);
            assert_eq!(codec, Codec::Plain as u8);
            assert!(len > noise.len());
        }
        assert!(b.incompressible);
        // Text after noise: the sample shows it pays again.
        let (codec, _) = frame(&mut b, &text);
        assert_eq!(codec, Codec::Zstd as u8);
        assert!(!b.incompressible);
    }
}
