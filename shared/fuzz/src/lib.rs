//! Helpers shared by the fuzz targets: parse contexts varied by the input's
//! first byte, and the checks every parser's output must pass.
//!
//! The property every target asserts first is "no panic, no hang, bounded
//! memory" on any input. Beyond that, whatever a parser returns must cross
//! the diode: its records must encode into a batch frame and decode back to
//! the same bytes.

use weir_shared::alerts::AlertContext;
use weir_shared::formats::{FormatError, ParseContext, ParseOutput};
use weir_shared::record::{self, Alert, Batch, DecodeLimits, Record};

/// Zones a context may name: none, UTC, two with DST on the hour, one with
/// a 30-minute DST shift, one with a negative non-hour offset.
pub const ZONES: [Option<chrono_tz::Tz>; 6] = [
    None,
    Some(chrono_tz::UTC),
    Some(chrono_tz::America::Chicago),
    Some(chrono_tz::Europe::Berlin),
    Some(chrono_tz::Australia::Lord_Howe),
    Some(chrono_tz::America::St_Johns),
];

/// Split off the first byte as a selector (0 for an empty input).
pub fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&s, rest)) => (s, rest),
        None => (0, data),
    }
}

/// A historian parse context chosen by `sel`: zone, configured tag or not,
/// historical or not, a discrete tag or not.
pub fn parse_context(sel: u8, file: &str) -> ParseContext {
    let mut ctx = ParseContext {
        file: (sel & 0x08 == 0).then(|| file.to_owned()),
        tz: ZONES[usize::from(sel & 0x07) % ZONES.len()],
        tag: (sel & 0x10 != 0).then(|| "TT101.PV".to_owned()),
        historical: sel & 0x20 != 0,
        ..ParseContext::default()
    };
    if sel & 0x40 != 0 {
        ctx.discrete_tags.insert("PUMP7.Running".to_owned());
        ctx.discrete_tags.insert("TT101.PV".to_owned());
    }
    ctx
}

/// An alert context chosen by `sel`: zone (never none: alert sources always
/// have one) and a message limit small enough to be hit.
pub fn alert_context(sel: u8) -> AlertContext {
    let tz = ZONES[1 + usize::from(sel & 0x07) % (ZONES.len() - 1)].unwrap_or(chrono_tz::UTC);
    AlertContext {
        // 2024-03-10T08:00:30Z, the fixtures' receive time.
        receive_time_ns: 1_710_057_630_000_000_000,
        tz,
        max_message_bytes: if sel & 0x08 == 0 { 8192 } else { 64 },
    }
}

const LIMITS: DecodeLimits = DecodeLimits {
    max_body_bytes: 16 << 20,
    max_records: 1 << 20,
};

/// Encode `records` as a batch frame, decode it and encode it again: the
/// two encodings must be byte-identical. Bytes, not values, are compared,
/// so a NaN that survives intact passes. (Uncompressed only: the zstd path
/// is `record_decode`'s, and a zstd context per input would dominate.)
pub fn assert_crosses_the_wire(records: Vec<Record>) {
    if records.is_empty() {
        return;
    }
    let batch = Batch { records };
    let mut frame = Vec::new();
    record::encode_frame(&batch, None, &mut frame).expect("parser output encodes");
    let back = record::decode_frame(&frame, LIMITS).expect("own frame decodes");
    let mut again = Vec::new();
    record::encode_frame(&back, None, &mut again).expect("decoded batch encodes");
    assert_eq!(frame, again, "batch frame does not round-trip");
}

/// Check a historian parser's result.
pub fn check_points(out: Result<ParseOutput, FormatError>) {
    let Ok(out) = out else { return };
    for r in &out.rejects {
        assert!(r.line >= 1, "reject lines are 1-based: {r:?}");
    }
    assert_crosses_the_wire(out.points.into_iter().map(Record::Point).collect());
}

/// Check an alert parser's result.
pub fn check_alert<E>(out: Result<Alert, E>) {
    if let Ok(alert) = out {
        assert_crosses_the_wire(vec![Record::Alert(Box::new(alert))]);
    }
}
