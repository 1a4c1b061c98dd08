//! Synthetic historian exports, shaped like `tests/fixtures/`.
//!
//! Benchmarks on a fixture of eight lines measure start-up costs, not
//! throughput, and checking megabytes of customer exports into the
//! repository is not an option. These generators write files of any size
//! with the fixtures' layout and a realistic mix of rows: mostly Good
//! analog samples, plus the cases that take other code paths in the parsers
//! (Bad rows without a value, Uncertain qualities, string and discrete
//! tags, PI system digital states and per-item `Errors`).
//!
//! Output is deterministic for a given seed, so two runs parse the same
//! bytes.
//!
//! [`export`] writes a file of any [`Format`] the sender supports, together
//! with the [`ParseContext`] a spool of that format would parse it with
//! (zone, discrete tags, Ignition tag table, generic CSV mapping) and the
//! number of points a correct parse yields, so a benchmark can check that it
//! measures the path that produces points and not the reject path.

use std::fmt::Write as _;

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_shared::formats::{CsvMapping, Format, FormatError, ParseContext, TsFormat, ignition};
use weir_shared::record::Point;

/// Start of the synthetic AVEVA history: 2024-11-03 00:00:00 (wall clock).
const AVEVA_START_S: i64 = 1_730_592_000;
/// Start of the synthetic PI Web API history: 2024-03-10T08:00:00Z.
const PI_START_S: i64 = 1_710_057_600;
/// Time between two consecutive synthetic samples.
const STEP_MS: i64 = 250;

/// Column header of an AVEVA History CSV export (as in the fixture).
pub const AVEVA_HEADER: &str = "DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n";

/// Analog tag-name prefixes; each gets [`TAGS_PER_PREFIX`] loops.
const PREFIXES: [&str; 5] = ["FIC", "TI", "PI", "LIC", "FT"];
const TAGS_PER_PREFIX: u32 = 8;

/// Bytes of AVEVA CSV text for `rows` samples, starting at global sample
/// index `first_row` (so that several files continue one history).
///
/// Per mille of rows: 10 Bad without a value, 20 Uncertain (`Quality` 16),
/// 10 string values (`BATCH.ID`, in `vValue`), 20 discrete `0`/`1`, 5 Good
/// with a local override (`OPCQuality` 216); the rest Good analog samples.
pub fn aveva_csv(first_row: u64, rows: u64, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed ^ first_row);
    // ~62 bytes a row.
    let mut out = String::with_capacity(AVEVA_HEADER.len() + rows as usize * 64);
    out.push_str(AVEVA_HEADER);
    for i in first_row..first_row + rows {
        let ts = aveva_timestamp(i);
        let kind = rng.random_range(0..1000u32);
        let tag = analog_tag(&mut rng);
        let value = 40.0 + rng.random_range(0.0..60.0f64);
        // `write!` into a String cannot fail.
        let _ = match kind {
            0..10 => writeln!(out, "{ts},{tag},,,1,24,0"),
            10..30 => writeln!(out, "{ts},{tag},{value:.2},{value:.2},16,64,64"),
            30..40 => writeln!(
                out,
                "{ts},BATCH.ID,,B-2024-1103-{:02},0,192,192",
                i / 10_000 % 100
            ),
            40..60 => {
                let on = u8::from(rng.random_bool(0.5));
                writeln!(out, "{ts},PUMP7.Running,{on},{on},0,192,192")
            }
            60..65 => writeln!(out, "{ts},{tag},{value:.2},{value:.2},0,192,216"),
            _ => writeln!(out, "{ts},{tag},{value:.2},{value:.2},0,192,192"),
        };
    }
    out
}

/// `2024-11-03 01:30:00.2500000`: wall-clock text with 100 ns digits.
fn aveva_timestamp(row: u64) -> String {
    let ms = i64::try_from(row).unwrap_or(i64::MAX / 2) * STEP_MS;
    let secs = AVEVA_START_S + ms.div_euclid(1000);
    let hundred_ns = ms.rem_euclid(1000) * 10_000;
    let whole = DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    format!("{whole}.{hundred_ns:07}")
}

fn analog_tag(rng: &mut StdRng) -> String {
    let prefix = PREFIXES[rng.random_range(0..PREFIXES.len())];
    format!("{prefix}{}.PV", 101 + rng.random_range(0..TAGS_PER_PREFIX))
}

/// Bytes of a PI Web API `recorded` document with `items` values.
///
/// Per mille of items: 20 SYSTEM digital states (`I/O Timeout`, `Shutdown`),
/// 10 items carrying `Errors` (parser rejects), 50 Questionable, 10
/// Substituted and Annotated; the rest Good floats.
pub fn pi_webapi_json(items: u64, seed: u64) -> String {
    pi_webapi_document(items, seed, true)
}

/// [`pi_webapi_json`] without the `Errors` items: those 10 per mille are
/// `Over Range` digital states instead, so every item becomes a point.
pub fn pi_webapi_json_valid(items: u64, seed: u64) -> String {
    pi_webapi_document(items, seed, false)
}

fn pi_webapi_document(items: u64, seed: u64, with_errors: bool) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(32 + items as usize * 170);
    out.push_str("{\n  \"Links\": {},\n  \"Items\": [\n");
    for i in 0..items {
        let ms = i64::try_from(i).unwrap_or(i64::MAX / 2) * STEP_MS;
        let ts = DateTime::from_timestamp_millis(PI_START_S * 1000 + ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .unwrap_or_default();
        let kind = rng.random_range(0..1000u32);
        let value = 60.0 + rng.random_range(0.0..20.0f64);
        let sep = if i + 1 == items { "" } else { "," };
        let flags = |good: bool, q: bool, s: bool, a: bool| {
            format!(
                "\"UnitsAbbreviation\": \"°C\", \"Good\": {good}, \"Questionable\": {q}, \"Substituted\": {s}, \"Annotated\": {a}"
            )
        };
        let item = match kind {
            0..10 => format!(
                "{{\"Timestamp\": \"{ts}\", \"Value\": {{\"Name\": \"I/O Timeout\", \"Value\": 246, \"IsSystem\": true}}, {}}}",
                flags(false, false, false, false)
            ),
            10..20 => format!(
                "{{\"Timestamp\": \"{ts}\", \"Value\": {{\"Name\": \"Shutdown\", \"Value\": 254, \"IsSystem\": true}}, {}}}",
                flags(false, false, false, false)
            ),
            20..30 if with_errors => format!(
                "{{\"Timestamp\": \"{ts}\", \"Errors\": [\"Handled error during stream transfer (example)\"]}}"
            ),
            20..30 => format!(
                "{{\"Timestamp\": \"{ts}\", \"Value\": {{\"Name\": \"Over Range\", \"Value\": 252, \"IsSystem\": true}}, {}}}",
                flags(false, false, false, false)
            ),
            30..80 => format!(
                "{{\"Timestamp\": \"{ts}\", \"Value\": {value:.3}, {}}}",
                flags(true, true, false, false)
            ),
            80..90 => format!(
                "{{\"Timestamp\": \"{ts}\", \"Value\": {value:.1}, {}}}",
                flags(true, false, true, true)
            ),
            _ => format!(
                "{{\"Timestamp\": \"{ts}\", \"Value\": {value}, {}}}",
                flags(true, false, false, false)
            ),
        };
        let _ = writeln!(out, "    {item}{sep}");
    }
    out.push_str("  ]\n}\n");
    out
}

/// The context the sender builds for a UTC AVEVA spool file.
pub fn aveva_context(file: &str) -> ParseContext {
    ParseContext {
        file: Some(file.to_owned()),
        tz: Some(chrono_tz::UTC),
        ..ParseContext::default()
    }
}

/// The context the sender builds for a single-tag PI Web API file.
pub fn pi_context(file: &str) -> ParseContext {
    ParseContext {
        file: Some(file.to_owned()),
        tag: Some("TT101.PV".to_owned()),
        ..ParseContext::default()
    }
}

/// Realistic [`Point`]s: a synthetic AVEVA file of `rows` rows, parsed and
/// numbered the way the sender numbers them.
pub fn aveva_points(rows: u64, seed: u64) -> Result<Vec<Point>, FormatError> {
    let csv = aveva_csv(0, rows, seed);
    let mut out = Format::Aveva.parse(csv.as_bytes(), &aveva_context("history_0000.csv"))?;
    for (seq, p) in (0u64..).zip(out.points.iter_mut()) {
        p.seq = seq;
    }
    Ok(out.points)
}

/// Zone of the local-time exports (AVEVA, Proficy, PIARC) of [`export`].
pub const LOCAL_TZ: Tz = chrono_tz::America::Chicago;
/// Zone of the generic CSV export of [`export`] (a European day-first layout).
pub const GENERIC_TZ: Tz = chrono_tz::Europe::Berlin;

/// A synthetic file of one format, as a spool of that format would get it.
#[derive(Debug, Clone)]
pub struct Export {
    /// The format it is written in.
    pub format: Format,
    /// The file's bytes.
    pub text: String,
    /// The context the sender parses it with.
    pub ctx: ParseContext,
    /// Records written (CSV rows, JSON items or lines, line-protocol
    /// lines); headers, comments and section lines not counted.
    pub records: u64,
    /// Points a correct parse yields: one per record, except InfluxDB lines
    /// with several value fields, which yield one per field.
    pub points: u64,
}

/// A file of `format` with `records` records, in the layout of the
/// fixture or parser tests of that format and with a realistic mix of
/// tags, values and qualities (see each generator). Every record is valid:
/// parsing it yields [`Export::points`] points and no rejects. Local-time
/// formats are written in [`LOCAL_TZ`] (generic CSV in [`GENERIC_TZ`]) and
/// their context names that zone.
pub fn export(format: Format, records: u64, seed: u64) -> Result<Export, FormatError> {
    let file = |name: &str| Some(name.to_owned());
    let (text, ctx, points) = match format {
        Format::PiWebApi => (
            pi_webapi_json_valid(records, seed),
            pi_context("TT101.PV.json"),
            records,
        ),
        Format::Aveva => (
            aveva_csv(0, records, seed),
            ParseContext {
                file: file("history_0000.csv"),
                tz: Some(LOCAL_TZ),
                discrete_tags: ["PUMP7.Running".to_owned()].into(),
                ..ParseContext::default()
            },
            records,
        ),
        Format::Ignition => (
            ignition_csv(records, seed),
            ParseContext {
                file: file("sqlt_data_1_2024_03.csv"),
                tag_table: Some(Arc::new(ignition::parse_tag_table(
                    ignition_tag_table_csv().as_bytes(),
                )?)),
                discrete_tags: [IGNITION_RUNNING_PATH.to_owned()].into(),
                ..ParseContext::default()
            },
            records,
        ),
        Format::Proficy => (
            proficy_csv(records, seed),
            ParseContext {
                file: file("filecollector_line2.csv"),
                tz: Some(LOCAL_TZ),
                discrete_tags: [PROFICY_RUNNING_TAG.to_owned()].into(),
                ..ParseContext::default()
            },
            records,
        ),
        Format::InfluxLp => {
            let (text, points) = influx_lp(records, seed);
            let ctx = ParseContext {
                file: file("bridge_0800.lp"),
                ..ParseContext::default()
            };
            (text, ctx, points)
        }
        Format::OpcUa => (
            opcua_jsonl(records, seed),
            ParseContext {
                file: file("historyread_line2.jsonl"),
                ..ParseContext::default()
            },
            records,
        ),
        Format::PiArc => (
            piarc_csv(records, seed),
            ParseContext {
                file: file("piarc_line2.csv"),
                tz: Some(LOCAL_TZ),
                ..ParseContext::default()
            },
            records,
        ),
        Format::GenericCsv => (
            generic_csv(records, seed),
            ParseContext {
                file: file("export.csv"),
                tz: Some(GENERIC_TZ),
                csv_map: Some(generic_mapping()),
                ..ParseContext::default()
            },
            records,
        ),
    };
    Ok(Export {
        format,
        text,
        ctx,
        records,
        points,
    })
}

/// Milliseconds since the epoch of sample `row` of a history starting at
/// `start_s`, `step_ms` apart.
fn sample_ms(start_s: i64, row: u64, step_ms: i64) -> i64 {
    let row = i64::try_from(row).unwrap_or(i64::MAX);
    start_s
        .saturating_mul(1000)
        .saturating_add(row.saturating_mul(step_ms))
}

/// `ms` as RFC 3339 UTC with milliseconds (`2024-03-10T08:00:00.250Z`).
fn rfc3339_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `ms` as wall-clock text in `tz`, through a chrono format string.
fn local_text(ms: i64, tz: Tz, layout: &str) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&tz).format(layout).to_string())
        .unwrap_or_default()
}

/// Ignition tag path of the discrete pump tag (an integer tag read as Bool).
const IGNITION_RUNNING_PATH: &str = "line2/pump7/running";
/// Ignition ids: analog float tags from 10, then the special tags.
const IGNITION_FIRST_ANALOG_ID: u32 = 10;
const IGNITION_RUNNING_ID: u32 = 60;
const IGNITION_TOTAL_ID: u32 = 61;
const IGNITION_STATE_ID: u32 = 62;

/// An Ignition `sqlth_te` export naming the tags [`ignition_csv`] writes:
/// 40 float tags (one of them retired), an integer pump state (declared
/// discrete by [`export`]), an integer totalizer and a string batch state.
pub fn ignition_tag_table_csv() -> String {
    let mut out = String::from("id,tagpath,scid,datatype,querymode,created,retired\n");
    let created = 1_704_067_200_000_i64;
    let mut id = IGNITION_FIRST_ANALOG_ID;
    for prefix in PREFIXES {
        for k in 0..TAGS_PER_PREFIX {
            // One tag was re-created once: the old id stays, retired.
            let retired = if id == IGNITION_FIRST_ANALOG_ID + 39 {
                "1706745600000"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{id},line2/{}{}/pv,1,1,0,{created},{retired}",
                prefix.to_ascii_lowercase(),
                101 + k
            );
            id += 1;
        }
    }
    let _ = writeln!(
        out,
        "{IGNITION_RUNNING_ID},{IGNITION_RUNNING_PATH},1,0,0,{created},"
    );
    let _ = writeln!(
        out,
        "{IGNITION_TOTAL_ID},line2/ft300/total,1,0,0,{created},"
    );
    let _ = writeln!(
        out,
        "{IGNITION_STATE_ID},line2/batch/state,1,2,0,{created},"
    );
    out
}

/// An Ignition `sqlt_data_1_2024_03` export (epoch ms, UTC) of `rows`
/// rows over the tags of [`ignition_tag_table_csv`].
///
/// Per mille of rows: 10 Bad (`dataintegrity` 0, no value), 5 Bad with a
/// stale value (`dataintegrity` 24), 20 pump state `0`/`1`, 20 totalizer
/// integers, 10 batch state strings; the rest Good floats.
pub fn ignition_csv(rows: u64, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(80 + rows as usize * 40);
    out.push_str("tagid,intvalue,floatvalue,stringvalue,datevalue,dataintegrity,t_stamp\n");
    let analog_tags = PREFIXES.len() as u32 * TAGS_PER_PREFIX;
    for i in 0..rows {
        let ts = sample_ms(PI_START_S, i, STEP_MS);
        let analog = IGNITION_FIRST_ANALOG_ID + rng.random_range(0..analog_tags);
        let value = 40.0 + rng.random_range(0.0..60.0f64);
        let _ = match rng.random_range(0..1000u32) {
            0..10 => writeln!(out, "{analog},,,,,0,{ts}"),
            10..15 => writeln!(out, "{analog},,{value:.3},,,24,{ts}"),
            15..35 => {
                let on = u8::from(rng.random_bool(0.5));
                writeln!(out, "{IGNITION_RUNNING_ID},{on},,,,192,{ts}")
            }
            35..55 => writeln!(out, "{IGNITION_TOTAL_ID},{},,,,192,{ts}", 120_000 + i),
            55..65 => {
                let state = ["RUNNING", "HELD", "COMPLETE"][rng.random_range(0..3usize)];
                writeln!(out, "{IGNITION_STATE_ID},,,{state},,192,{ts}")
            }
            _ => writeln!(out, "{analog},,{value:.3},,,192,{ts}"),
        };
    }
    out
}

/// Proficy tag of the discrete pump (declared discrete by [`export`]).
const PROFICY_RUNNING_TAG: &str = "TIGER.LINE2.PUMP_7.RUNNING";

/// A GE Proficy File-collector CSV (`[Data]` section, local time in
/// [`LOCAL_TZ`] as `M/D/YY HH:MM:SS.fff`) of `rows` rows.
///
/// Per mille of rows: 10 Bad `-9999` sentinels, 20 Uncertain, 20 pump
/// `0`/`1`, 10 string batch ids; the rest Good floats. Starts at
/// 2024-03-10 01:55 CST, so a file of more than 1 200 rows crosses the
/// spring-forward gap as a real collector writes it (01:59:59.750 is
/// followed by 03:00:00).
pub fn proficy_csv(rows: u64, seed: u64) -> String {
    /// 2024-03-10T07:55:00Z = 01:55 CST.
    const START_S: i64 = PI_START_S - 300;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(128 + rows as usize * 52);
    out.push_str(
        "[Data]\nTagname,TimeStamp,Value,DataQuality\n\
         *exported from HIST01 for line 2; local time America/Chicago\n",
    );
    for i in 0..rows {
        let ts = local_text(
            sample_ms(START_S, i, STEP_MS),
            LOCAL_TZ,
            "%-m/%-d/%y %H:%M:%S%.3f",
        );
        let prefix = PREFIXES[rng.random_range(0..PREFIXES.len())];
        let tag = format!(
            "TIGER.LINE2.{prefix}_{}.F_CV",
            101 + rng.random_range(0..TAGS_PER_PREFIX)
        );
        let value = 40.0 + rng.random_range(0.0..60.0f64);
        let _ = match rng.random_range(0..1000u32) {
            0..10 => writeln!(out, "{tag},{ts},-9999,Bad"),
            10..30 => writeln!(out, "{tag},{ts},{value:.2},Uncertain"),
            30..50 => {
                let on = u8::from(rng.random_bool(0.5));
                writeln!(out, "{PROFICY_RUNNING_TAG},{ts},{on},Good")
            }
            50..60 => writeln!(
                out,
                "TIGER.LINE2.BATCH.ID,{ts},B-2024-0310-{:02},Good",
                i / 1000 % 100
            ),
            _ => writeln!(out, "{tag},{ts},{value:.2},Good"),
        };
    }
    out
}

/// InfluxDB line protocol (ns timestamps) of `lines` lines, and the points
/// they make.
///
/// Per mille of lines: 20 Uncertain (`quality=64i`) with a `units` string
/// field and an escaped space in the tag, 20 boolean `state`, 10 string
/// `text`, 50 pump lines without a `tag` key carrying three value fields
/// (`speed` integer, `current` float, `running` boolean: three points), 10
/// meter lines with an unsigned totalizer; the rest Good floats. One
/// comment line heads the file, as in the fixture.
pub fn influx_lp(lines: u64, seed: u64) -> (String, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(64 + lines as usize * 96);
    out.push_str("# historian bridge output, precision=ns\n");
    let mut points = 0u64;
    let base = "process,site=plant1,area=utilities";
    for i in 0..lines {
        let ts = sample_ms(PI_START_S, i, STEP_MS) * 1_000_000;
        let tag = analog_tag(&mut rng);
        let value = 40.0 + rng.random_range(0.0..60.0f64);
        let _ = match rng.random_range(0..1000u32) {
            0..20 => writeln!(
                out,
                "{base},tag=TT\\ {}.PV value={value:.1},quality=64i,units=\"degC\" {ts}",
                201 + rng.random_range(0..8u32)
            ),
            20..40 => {
                let on = rng.random_bool(0.5);
                writeln!(out, "{base},tag=PUMP7.Running state={on},quality=192i {ts}")
            }
            40..50 => writeln!(
                out,
                "{base},tag=BATCH.ID text=\"B-2024-03-10-{:02}\",quality=192i {ts}",
                i / 1000 % 100
            ),
            50..100 => {
                points += 2;
                let on = if rng.random_bool(0.9) { "t" } else { "f" };
                writeln!(
                    out,
                    "pump,site=plant1,area=utilities,asset=P{} speed={}i,current={:.2},running={on} {ts}",
                    1 + rng.random_range(0..8u32),
                    1400 + rng.random_range(0..100u32),
                    10.0 + rng.random_range(0.0..5.0f64)
                )
            }
            100..110 => writeln!(
                out,
                "meter,site=plant1,area=utilities,asset=FT300 total={}u {ts}",
                1_200_000 + i
            ),
            _ => writeln!(out, "{base},tag={tag} value={value:.2},quality=192i {ts}"),
        };
        points += 1;
    }
    (out, points)
}

/// OPC UA HistoryRead JSON lines (one `{NodeId, DataValue}` a line) of
/// `lines` values.
///
/// Per mille: 10 BadNoCommunication without a value, 20
/// UncertainLastUsableValue with its symbol, 10 Interpolated (`1026`
/// InfoType bits), 20 Boolean, 10 Int32 counters, 10 String, 20 Float
/// with `SourcePicoseconds`; the rest Good Doubles (Status omitted, as the
/// encoding does), every tenth with a `ServerTimestamp`.
pub fn opcua_jsonl(lines: u64, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(lines as usize * 150);
    let ns = "nsu=urn:plant1:line2;s=";
    for i in 0..lines {
        let ms = sample_ms(PI_START_S, i, STEP_MS);
        let ts = rfc3339_ms(ms);
        let tag = analog_tag(&mut rng);
        let value = 40.0 + rng.random_range(0.0..60.0f64);
        let (node, dv) = match rng.random_range(0..1000u32) {
            0..10 => (
                tag,
                format!(
                    "{{\"Status\":{{\"Code\":2150694912,\"Symbol\":\"BadNoCommunication\"}},\"SourceTimestamp\":\"{ts}\",\"ServerTimestamp\":\"{}\"}}",
                    rfc3339_ms(ms + 2)
                ),
            ),
            10..30 => (
                tag,
                format!(
                    "{{\"UaType\":11,\"Value\":{value:.3},\"Status\":{{\"Code\":1083179008,\"Symbol\":\"UncertainLastUsableValue\"}},\"SourceTimestamp\":\"{ts}\"}}"
                ),
            ),
            30..40 => (
                tag,
                format!(
                    "{{\"UaType\":11,\"Value\":{value:.3},\"Status\":{{\"Code\":1026}},\"SourceTimestamp\":\"{ts}\"}}"
                ),
            ),
            40..60 => (
                "PUMP7.Running".to_owned(),
                format!(
                    "{{\"UaType\":1,\"Value\":{},\"SourceTimestamp\":\"{ts}\"}}",
                    rng.random_bool(0.5)
                ),
            ),
            60..70 => (
                "FT300.Count".to_owned(),
                format!(
                    "{{\"UaType\":6,\"Value\":{},\"SourceTimestamp\":\"{ts}\"}}",
                    40_000 + i
                ),
            ),
            70..80 => (
                "BATCH.ID".to_owned(),
                format!(
                    "{{\"UaType\":12,\"Value\":\"B-2024-03-10-{:02}\",\"SourceTimestamp\":\"{ts}\"}}",
                    i / 1000 % 100
                ),
            ),
            80..100 => (
                tag,
                format!(
                    "{{\"UaType\":10,\"Value\":{value:.2},\"SourceTimestamp\":\"{ts}\",\"SourcePicoseconds\":{}}}",
                    rng.random_range(0..10_000u32)
                ),
            ),
            _ if i % 10 == 0 => (
                tag,
                format!(
                    "{{\"UaType\":11,\"Value\":{value},\"SourceTimestamp\":\"{ts}\",\"ServerTimestamp\":\"{}\"}}",
                    rfc3339_ms(ms + 57)
                ),
            ),
            _ => (
                tag,
                format!("{{\"UaType\":11,\"Value\":{value},\"SourceTimestamp\":\"{ts}\"}}"),
            ),
        };
        let _ = writeln!(out, "{{\"NodeId\":\"{ns}{node}\",\"DataValue\":{dv}}}");
    }
    out
}

/// A PI piconfig `PIARC` listing (`TAG,Type,Value,TIME,TimeNum,Status,
/// Flags,Annot`) of `rows` rows: `TIME` local in [`LOCAL_TZ`] with four
/// fraction digits, `TimeNum` exact seconds.
///
/// Per mille of rows: 10 `I/O Timeout` and 10 `Shutdown` SYSTEM states
/// (negative `Status`), 30 questionable (`Q`), 5 modified and annotated
/// (`MA`, with a quoted annotation holding a comma), 20 `Digital` points in
/// their own state set, 10 `String` batch ids, 20 `Int32` totalizers; the
/// rest Good `Float32`.
pub fn piarc_csv(rows: u64, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(64 + rows as usize * 72);
    out.push_str("TAG,Type,Value,TIME,TimeNum,Status,Flags,Annot\n");
    for i in 0..rows {
        let ms = sample_ms(PI_START_S, i, STEP_MS);
        // `10-Mar-24 03:00:02.2500` and `1710057602.25`.
        let frac = ms.rem_euclid(1000);
        let time = format!(
            "{}.{:04}",
            local_text(ms, LOCAL_TZ, "%d-%b-%y %H:%M:%S"),
            frac * 10
        );
        let secs = ms.div_euclid(1000);
        let mut num = format!("{secs}.{frac:03}");
        let kept = num.trim_end_matches('0').trim_end_matches('.').len();
        num.truncate(kept);
        let tag = analog_tag(&mut rng);
        let value = 40.0 + rng.random_range(0.0..60.0f64);
        let _ = match rng.random_range(0..1000u32) {
            0..10 => writeln!(out, "{tag},Float32,I/O Timeout,{time},{num},-246,,"),
            10..20 => writeln!(out, "{tag},Float32,Shutdown,{time},{num},-254,,"),
            20..50 => writeln!(out, "{tag},Float32,{value:.3},{time},{num},0,Q,"),
            50..55 => writeln!(
                out,
                "{tag},Float32,{value:.1},{time},{num},0,MA,\"Lab value, see shift log {}\"",
                i / 100
            ),
            55..75 => {
                let (code, name) =
                    [(0, "MAN"), (1, "AUTO"), (2, "CAS")][rng.random_range(0..3usize)];
                writeln!(out, "FIC101.MODE,Digital,{name},{time},{num},{code},,")
            }
            75..85 => writeln!(
                out,
                "BATCH.ID,String,B-2024-0310-{:02},{time},{num},0,,",
                i / 1000 % 100
            ),
            85..105 => writeln!(out, "FT300.TOT,Int32,{},{time},{num},0,,", 12_000 + i),
            _ => writeln!(out, "{tag},Float32,{value:.3},{time},{num},0,,"),
        };
    }
    out
}

/// The mapping of [`generic_csv`]: `;`-separated, day-first local time,
/// quality and unit columns, one unmapped column.
pub fn generic_mapping() -> CsvMapping {
    CsvMapping {
        tag: "Sensor".into(),
        timestamp: "Time".into(),
        value: "Reading".into(),
        quality: Some("Q".into()),
        unit: Some("EU".into()),
        ts_format: TsFormat::Pattern("%d.%m.%Y %H:%M:%S%.3f".into()),
        delimiter: b';',
    }
}

/// A European CSV export for [`generic_mapping`] (`Time;Sensor;Reading;
/// Q;EU;Line`, local time in [`GENERIC_TZ`]) of `rows` rows.
///
/// Per mille of rows: 10 Bad (`0`, empty reading), 20 `Uncertain` as a
/// word, 20 pump `true`/`false` (read as `Bool` with no discrete
/// declaration), 10 string batch ids with an OPC UA
/// StatusCode as quality, 10 without a quality (Good); the rest Good
/// floats with OPC DA quality `192`.
pub fn generic_csv(rows: u64, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(64 + rows as usize * 56);
    out.push_str("Time;Sensor;Reading;Q;EU;Line\n");
    for i in 0..rows {
        let ts = local_text(
            sample_ms(PI_START_S, i, STEP_MS),
            GENERIC_TZ,
            "%d.%m.%Y %H:%M:%S%.3f",
        );
        let tag = analog_tag(&mut rng);
        let unit = match tag.get(..2) {
            Some("TI") => "degC",
            Some("PI") => "bar",
            Some("LI") => "%",
            _ => "m3/h",
        };
        let value = 40.0 + rng.random_range(0.0..60.0f64);
        let _ = match rng.random_range(0..1000u32) {
            0..10 => writeln!(out, "{ts};{tag};;0;{unit};L2"),
            10..30 => writeln!(out, "{ts};{tag};{value:.2};Uncertain;{unit};L2"),
            30..50 => {
                let on = rng.random_bool(0.5);
                writeln!(out, "{ts};PUMP7.Running;{on};192;;L2")
            }
            50..60 => writeln!(out, "{ts};BATCH.ID;B-{:02};1083179008;;L2", i / 1000 % 100),
            60..70 => writeln!(out, "{ts};{tag};{value:.2};;{unit};L2"),
            _ => writeln!(out, "{ts};{tag};{value:.2};192;{unit};L2"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aveva_file_parses_without_rejects() {
        let csv = aveva_csv(0, 2000, 7);
        let out = Format::Aveva
            .parse(csv.as_bytes(), &aveva_context("a.csv"))
            .expect("parses");
        assert_eq!(out.points.len(), 2000);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects.first());
    }

    #[test]
    fn aveva_timestamps_match_the_fixture_layout() {
        assert_eq!(aveva_timestamp(0), "2024-11-03 00:00:00.0000000");
        assert_eq!(aveva_timestamp(6), "2024-11-03 00:00:01.5000000");
    }

    #[test]
    fn pi_file_parses_with_only_error_items_rejected() {
        let json = pi_webapi_json(3000, 7);
        let out = Format::PiWebApi
            .parse(json.as_bytes(), &pi_context("TT101.PV.json"))
            .expect("parses");
        assert_eq!(out.points.len() + out.rejects.len(), 3000);
        assert!(!out.rejects.is_empty());
        assert!(out.rejects.len() < 100);
    }

    #[test]
    fn valid_pi_file_has_no_rejects() {
        let json = pi_webapi_json_valid(3000, 7);
        let out = Format::PiWebApi
            .parse(json.as_bytes(), &pi_context("TT101.PV.json"))
            .expect("parses");
        assert_eq!(out.points.len(), 3000);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects.first());
    }

    #[test]
    fn every_format_parses_every_record_without_rejects() {
        for format in Format::ALL {
            let export = export(format, 3000, 11).expect("export");
            let out = format
                .parse(export.text.as_bytes(), &export.ctx)
                .unwrap_or_else(|e| panic!("{format}: {e}"));
            assert!(
                out.rejects.is_empty(),
                "{format}: {} rejects, first {:?}",
                out.rejects.len(),
                out.rejects.first()
            );
            assert_eq!(out.points.len() as u64, export.points, "{format}");
            assert!(export.points >= export.records, "{format}");
        }
    }

    #[test]
    fn exports_mix_qualities_and_value_types() {
        use weir_shared::formats::status;
        use weir_shared::record::Value;
        for format in Format::ALL {
            let export = export(format, 3000, 11).expect("export");
            let out = format
                .parse(export.text.as_bytes(), &export.ctx)
                .expect("parses");
            let statuses: std::collections::BTreeSet<u32> =
                out.points.iter().map(|p| p.status & 0xC000_0000).collect();
            assert!(statuses.contains(&status::GOOD), "{format}: Good");
            assert!(statuses.len() >= 2, "{format}: {statuses:?}");
            let has = |f: fn(&Value) -> bool| out.points.iter().any(|p| f(&p.value));
            assert!(has(|v| matches!(v, Value::F64(_))), "{format}: floats");
            assert!(
                has(|v| !matches!(v, Value::F64(_))),
                "{format}: only floats"
            );
            let tags: std::collections::BTreeSet<&str> =
                out.points.iter().map(|p| p.tag.as_str()).collect();
            // PI Web API `recorded` is one tag per file.
            if format != Format::PiWebApi {
                assert!(tags.len() >= 10, "{format}: {} tags", tags.len());
            }
        }
    }

    #[test]
    fn proficy_crosses_the_spring_forward_gap_in_real_time() {
        let export = export(Format::Proficy, 1300, 3).expect("export");
        assert!(export.text.contains("3/10/24 01:59:59.750,"));
        assert!(export.text.contains("3/10/24 03:00:00.000,"));
        let out = Format::Proficy
            .parse(export.text.as_bytes(), &export.ctx)
            .expect("parses");
        let gaps: Vec<i64> = out
            .points
            .windows(2)
            .map(|w| w[1].ts_ns - w[0].ts_ns)
            .collect();
        assert!(gaps.iter().all(|&g| g == 250_000_000), "steady 250 ms");
    }
}
