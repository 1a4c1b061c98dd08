//! Local wall-clock time to UTC, for exports that write local time.
//!
//! Several historians (AVEVA History queries, Proficy file collectors, PI
//! piconfig) print timestamps as local wall-clock text with no offset. With
//! daylight saving time that text is not a function of the instant:
//!
//! - in the fall-back hour every wall time occurs twice (a *fold*), and
//! - in the spring-forward hour some wall times never occur (a *gap*).
//!
//! The only extra evidence an export file offers is its order: a historian
//! writes a tag's samples in time order, so once a file has reached an instant,
//! a later row that *could* be that instant again must be the second pass
//! through the fold. [`LocalClock`] carries that evidence, the highest instant
//! resolved so far, across the rows of one file, and reports how each
//! timestamp was resolved ([`TsResolution`]) so data-quality checks downstream
//! can mark folded or shifted samples instead of trusting them blindly.
//!
//! Gaps are resolved the way a clock that missed the change would read them:
//! with the offset in force *before* the gap (02:30 in America/Chicago on
//! 2024-03-10 is read as 02:30 CST = 08:30Z, which the zone shows as 03:30 CDT).

use chrono::{LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone};
use chrono_tz::Tz;

use crate::record::TsResolution;

/// How far back [`LocalClock::resolve`] looks for the offset in force before
/// a gap, in steps of [`GAP_STEP_MINUTES`]. 49 hours covers every gap in the
/// tz database, including whole skipped days (Samoa, 2011-12-30).
const GAP_SEARCH_STEPS: i64 = 49 * 4;
/// Step of the backwards search for the pre-gap offset. Shorter than any DST
/// gap in use, so the first valid wall time found lies just before the gap.
const GAP_STEP_MINUTES: i64 = 15;

/// Why a local wall-clock time could not be turned into UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LocalTimeError {
    /// The instant is outside what `i64` nanoseconds since 1970 can hold
    /// (roughly years 1677–2262).
    #[error("local time out of the representable range")]
    OutOfRange,
    /// The time falls in a gap and no valid wall time was found before it.
    #[error("no offset found before the local-time gap")]
    NoOffsetBeforeGap,
}

/// Resolves the local wall-clock timestamps of *one file* to UTC.
///
/// Create one per file: the fold rule depends on what the file has already
/// shown (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClock {
    tz: Tz,
    high_water_ns: Option<i64>,
}

impl LocalClock {
    /// A clock for a file written in zone `tz`, with no rows seen yet.
    pub fn new(tz: Tz) -> Self {
        Self {
            tz,
            high_water_ns: None,
        }
    }

    /// The zone this clock reads wall-clock times in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The highest instant resolved so far (ns since the Unix epoch, UTC).
    pub fn high_water_ns(&self) -> Option<i64> {
        self.high_water_ns
    }

    /// Resolve `naive` (a wall-clock reading in this clock's zone) to
    /// nanoseconds since the Unix epoch, UTC, and say how it was resolved.
    ///
    /// - one valid reading: that instant, [`TsResolution::Local`];
    /// - fold: the earlier instant ([`TsResolution::AmbiguousEarlier`]),
    ///   unless this file has already reached it (earlier ≤ highest instant
    ///   resolved so far), then the later one ([`TsResolution::AmbiguousLater`]);
    /// - gap: read with the offset in force before the gap,
    ///   [`TsResolution::GapShifted`].
    ///
    /// Every successful call raises the high-water mark to the result.
    pub fn resolve(&mut self, naive: NaiveDateTime) -> Result<(i64, TsResolution), LocalTimeError> {
        let (ns, how) = match self.tz.from_local_datetime(&naive) {
            LocalResult::Single(dt) => (
                dt.timestamp_nanos_opt().ok_or(LocalTimeError::OutOfRange)?,
                TsResolution::Local,
            ),
            LocalResult::Ambiguous(a, b) => {
                let a = a.timestamp_nanos_opt().ok_or(LocalTimeError::OutOfRange)?;
                let b = b.timestamp_nanos_opt().ok_or(LocalTimeError::OutOfRange)?;
                let (earlier, later) = (a.min(b), a.max(b));
                match self.high_water_ns {
                    Some(high) if earlier <= high => (later, TsResolution::AmbiguousLater),
                    _ => (earlier, TsResolution::AmbiguousEarlier),
                }
            }
            LocalResult::None => {
                let offset_s = self.offset_before_gap(naive)?;
                let utc = naive
                    .checked_sub_signed(TimeDelta::seconds(i64::from(offset_s)))
                    .ok_or(LocalTimeError::OutOfRange)?;
                let ns = utc
                    .and_utc()
                    .timestamp_nanos_opt()
                    .ok_or(LocalTimeError::OutOfRange)?;
                (ns, TsResolution::GapShifted)
            }
        };
        self.high_water_ns = Some(self.high_water_ns.map_or(ns, |high| high.max(ns)));
        Ok((ns, how))
    }

    /// Offset (seconds east of UTC) of the last valid wall time before the
    /// gap that contains `naive`.
    fn offset_before_gap(&self, naive: NaiveDateTime) -> Result<i32, LocalTimeError> {
        for step in 1..=GAP_SEARCH_STEPS {
            let earlier = naive
                .checked_sub_signed(TimeDelta::minutes(step * GAP_STEP_MINUTES))
                .ok_or(LocalTimeError::OutOfRange)?;
            match self.tz.from_local_datetime(&earlier) {
                LocalResult::Single(dt) => return Ok(dt.offset().fix().local_minus_utc()),
                // A fold right before a gap: the later reading is the one in
                // force when the gap starts.
                LocalResult::Ambiguous(a, b) => {
                    let later = if a <= b { b } else { a };
                    return Ok(later.offset().fix().local_minus_utc());
                }
                LocalResult::None => {}
            }
        }
        Err(LocalTimeError::NoOffsetBeforeGap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn wall(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|date| date.and_hms_opt(h, mi, s))
            .expect("valid test date")
    }

    fn utc_ns(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        wall(y, mo, d, h, mi, s)
            .and_utc()
            .timestamp_nanos_opt()
            .expect("in range")
    }

    #[test]
    fn normal_time_is_local() {
        let mut clock = LocalClock::new(chrono_tz::America::Chicago);
        // 2024-07-01 12:00 CDT (UTC-5).
        assert_eq!(
            clock.resolve(wall(2024, 7, 1, 12, 0, 0)),
            Ok((utc_ns(2024, 7, 1, 17, 0, 0), TsResolution::Local))
        );
        // Winter: CST (UTC-6).
        assert_eq!(
            clock.resolve(wall(2024, 12, 1, 12, 0, 0)),
            Ok((utc_ns(2024, 12, 1, 18, 0, 0), TsResolution::Local))
        );
        assert_eq!(clock.high_water_ns(), Some(utc_ns(2024, 12, 1, 18, 0, 0)));
    }

    #[test]
    fn utc_zone_is_identity() {
        let mut clock = LocalClock::new(chrono_tz::UTC);
        assert_eq!(clock.tz(), chrono_tz::UTC);
        assert_eq!(
            clock.resolve(wall(2024, 3, 10, 2, 30, 0)),
            Ok((utc_ns(2024, 3, 10, 2, 30, 0), TsResolution::Local))
        );
    }

    #[test]
    fn fold_resolves_by_file_order() {
        let mut clock = LocalClock::new(chrono_tz::America::Chicago);
        // 2024-11-03: 02:00 CDT falls back to 01:00 CST.
        assert_eq!(
            clock.resolve(wall(2024, 11, 3, 1, 29, 30)),
            Ok((
                utc_ns(2024, 11, 3, 6, 29, 30),
                TsResolution::AmbiguousEarlier
            ))
        );
        assert_eq!(
            clock.resolve(wall(2024, 11, 3, 1, 30, 0)),
            Ok((
                utc_ns(2024, 11, 3, 6, 30, 0),
                TsResolution::AmbiguousEarlier
            ))
        );
        // Same wall time again: the file already reached 06:30Z.
        assert_eq!(
            clock.resolve(wall(2024, 11, 3, 1, 30, 0)),
            Ok((utc_ns(2024, 11, 3, 7, 30, 0), TsResolution::AmbiguousLater))
        );
        // Once in the second pass, the rest of the fold stays there.
        assert_eq!(
            clock.resolve(wall(2024, 11, 3, 1, 45, 0)),
            Ok((utc_ns(2024, 11, 3, 7, 45, 0), TsResolution::AmbiguousLater))
        );
        assert_eq!(
            clock.resolve(wall(2024, 11, 3, 2, 0, 0)),
            Ok((utc_ns(2024, 11, 3, 8, 0, 0), TsResolution::Local))
        );
    }

    #[test]
    fn fold_in_a_fresh_file_is_earlier() {
        let mut clock = LocalClock::new(chrono_tz::America::Chicago);
        assert_eq!(
            clock.resolve(wall(2024, 11, 3, 1, 30, 0)),
            Ok((
                utc_ns(2024, 11, 3, 6, 30, 0),
                TsResolution::AmbiguousEarlier
            ))
        );
    }

    #[test]
    fn gap_uses_offset_before_the_gap() {
        let mut clock = LocalClock::new(chrono_tz::America::Chicago);
        // 2024-03-10: 02:00 CST springs forward to 03:00 CDT.
        assert_eq!(
            clock.resolve(wall(2024, 3, 10, 2, 30, 0)),
            Ok((utc_ns(2024, 3, 10, 8, 30, 0), TsResolution::GapShifted))
        );
        assert_eq!(
            clock.resolve(wall(2024, 3, 10, 1, 59, 58)),
            Ok((utc_ns(2024, 3, 10, 7, 59, 58), TsResolution::Local))
        );
        assert_eq!(
            clock.resolve(wall(2024, 3, 10, 3, 0, 2)),
            Ok((utc_ns(2024, 3, 10, 8, 0, 2), TsResolution::Local))
        );
        // The high-water mark never goes back.
        assert_eq!(clock.high_water_ns(), Some(utc_ns(2024, 3, 10, 8, 30, 0)));
    }

    #[test]
    fn half_hour_gap_lord_howe() {
        // Australia/Lord_Howe springs forward 02:00 → 02:30 (UTC+10:30 → +11).
        let mut clock = LocalClock::new(chrono_tz::Australia::Lord_Howe);
        let (ns, how) = clock
            .resolve(wall(2024, 10, 6, 2, 15, 0))
            .expect("resolves");
        assert_eq!(how, TsResolution::GapShifted);
        // 02:15 at +10:30 = 15:45Z the previous day.
        assert_eq!(ns, utc_ns(2024, 10, 5, 15, 45, 0));
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut clock = LocalClock::new(chrono_tz::UTC);
        assert_eq!(
            clock.resolve(wall(2300, 1, 1, 0, 0, 0)),
            Err(LocalTimeError::OutOfRange)
        );
        assert_eq!(clock.high_water_ns(), None);
    }
}
