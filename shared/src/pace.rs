//! Token-bucket pacing as arithmetic on a caller-given `Instant`.
//!
//! A data diode is usually a fixed-rate link behind a faster NIC: sending
//! faster than the diode's rate loses datagrams in its buffer. The pacer
//! admits bytes at `bytes_per_sec` with at most `burst_bytes` back to back;
//! the shell sleeps until the instant the pacer names.

use std::time::{Duration, Instant};

/// A token bucket over bytes.
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_sec: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl Pacer {
    /// A pacer admitting `bytes_per_sec` with bursts of `burst_bytes`,
    /// starting with a full bucket at `now`. Both are at least 1.
    pub fn new(now: Instant, bytes_per_sec: u64, burst_bytes: u64) -> Self {
        let burst = burst_bytes.max(1);
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// `Ok(())` if `len` bytes may leave at `now` (and takes them), else the
    /// instant to retry. A `len` above the burst size is admitted once the
    /// bucket is full, so it can never wait forever.
    pub fn poll_send(&mut self, now: Instant, len: u64) -> Result<(), Instant> {
        self.poll_budget(now, len)?;
        self.consume(len);
        Ok(())
    }

    /// The bytes that may leave at `now` if at least `unit` may (nothing is
    /// taken: send what fits, then [`Pacer::consume`] it), else the instant
    /// `unit` bytes will. A caller sizing its burst from the budget sends
    /// single datagrams on a slow link and full bursts on a fast one, so
    /// nothing queued waits behind a long burst.
    pub fn poll_budget(&mut self, now: Instant, unit: u64) -> Result<u64, Instant> {
        self.refill(now);
        let need = unit.min(self.burst);
        if self.tokens >= need {
            return Ok(self.tokens.max(need));
        }
        let wait_ns =
            u128::from(need - self.tokens) * 1_000_000_000 / u128::from(self.bytes_per_sec) + 1;
        Err(now + Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)))
    }

    /// Take `len` bytes of budget (all of it if `len` is more).
    pub fn consume(&mut self, len: u64) {
        self.tokens = self.tokens.saturating_sub(len);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let earned = elapsed * u128::from(self.bytes_per_sec) / 1_000_000_000;
        if earned > 0 {
            let tokens = (u128::from(self.tokens) + earned).min(u128::from(self.burst));
            self.tokens = u64::try_from(tokens).unwrap_or(self.burst);
            // Advance `last` only by the time that earned whole tokens, so
            // sub-token remainders are not lost at high call rates.
            let used_ns = earned * 1_000_000_000 / u128::from(self.bytes_per_sec);
            self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
            if self.tokens == self.burst {
                self.last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive the pacer with a fake clock that jumps to each retry instant:
    /// the achieved rate must match the configured one.
    // reason: test byte counts stay far below 2^52, so f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    fn achieved_rate(rate: u64, burst: u64, len: u64, total: u64) -> f64 {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, rate, burst);
        let mut now = t0;
        let mut sent = 0;
        while sent < total {
            match p.poll_send(now, len) {
                Ok(()) => sent += len,
                Err(at) => now = at,
            }
        }
        // Exclude the initial burst, which leaves at t0.
        (sent - burst.min(sent)) as f64 / now.duration_since(t0).as_secs_f64()
    }

    #[test]
    // reason: test rates stay far below 2^52, so f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    fn achieved_rate_matches_configured_rate() {
        for rate in [1_250_000u64, 12_500_000, 125_000_000, 1_250_000_000] {
            let got = achieved_rate(rate, 16 * 1470, 1470, rate / 2);
            let err = (got - rate as f64).abs() / rate as f64;
            assert!(err < 0.01, "rate {rate}: got {got}, error {err}");
        }
    }

    #[test]
    fn burst_is_bounded() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000, 3000);
        assert!(p.poll_send(t0, 1000).is_ok());
        assert!(p.poll_send(t0, 1000).is_ok());
        assert!(p.poll_send(t0, 1000).is_ok());
        let at = p.poll_send(t0, 1000).expect_err("bucket empty");
        assert!(at >= t0 + Duration::from_millis(999) && at <= t0 + Duration::from_millis(1001));
        assert!(p.poll_send(at, 1000).is_ok());
    }

    #[test]
    fn oversized_send_never_waits_forever() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 100, 10);
        assert!(p.poll_send(t0, 1_000_000).is_ok());
        let at = p.poll_send(t0, 1_000_000).expect_err("empty");
        assert!(p.poll_send(at, 1_000_000).is_ok());
    }

    #[test]
    fn budget_sizes_bursts_to_the_tokens_earned() {
        let t0 = Instant::now();
        // 1 MB/s, bucket of 10 datagrams of 1000 bytes.
        let mut p = Pacer::new(t0, 1_000_000, 10_000);
        assert_eq!(p.poll_budget(t0, 1000), Ok(10_000));
        p.consume(10_000);
        let at = p.poll_budget(t0, 1000).expect_err("empty");
        assert_eq!(at, t0 + Duration::from_millis(1) + Duration::from_nanos(1));
        // One datagram's worth earned: a burst of one, not ten.
        assert_eq!(p.poll_budget(at, 1000), Ok(1000));
        p.consume(1000);
        assert!(p.poll_budget(at, 1000).is_err());
    }
}
