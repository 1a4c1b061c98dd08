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

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_shared::formats::{Format, FormatError, ParseContext};
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
            20..30 => format!(
                "{{\"Timestamp\": \"{ts}\", \"Errors\": [\"Handled error during stream transfer (example)\"]}}"
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
}
