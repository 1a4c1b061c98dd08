//! Helpers shared by the unit tests of the parsers.

/// Nanoseconds since the epoch of an RFC 3339 test timestamp.
pub(crate) fn ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("test timestamp")
        .timestamp_nanos_opt()
        .expect("in range")
}
