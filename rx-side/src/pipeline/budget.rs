//! Byte budgets: how much data may wait between stages.
//!
//! ```text
//!  recv ──RecvBatch──> verify ──Verified──> decode        (received: holds the datagrams)
//!  decode ──OpenedBlock──> dq ──> outbox writer, commit   (decoded: holds the frames)
//! ```
//!
//! Channels count messages, but a message here may be one datagram or a
//! 2 MiB receive batch, one alert or a 1 MiB block: a queue bounded by count
//! is bounded in memory only by its worst case. Each message carries a
//! [`Held`] share of its budget, returned when the message is dropped, so
//! the bytes waiting between two stages stay under the budget whatever the
//! mix. The kernel's socket buffer, not this process, absorbs a burst the
//! decoder cannot keep up with.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget granularity, bytes.
const UNIT: usize = 1024;

/// A byte budget shared by the stages on either side of a queue.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    units: u32,
}

/// A share of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Held {
    _permit: OwnedSemaphorePermit,
}

impl Budget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: usize) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Units for `bytes`: at least one, at most the whole budget (a message
    /// larger than the budget waits for all of it, never for ever).
    fn units_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units)
    }

    /// Wait for room for `bytes`.
    pub async fn take(&self, bytes: usize) -> Held {
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(self.units_for(bytes))
            .await
            // The semaphore lives in `self` and is never closed.
            .unwrap_or_else(|_| unreachable!("budget semaphore closed"));
        Held { _permit: permit }
    }

    /// Room for `bytes` now, or `None` if the budget is spent.
    pub fn try_take(&self, bytes: usize) -> Option<Held> {
        self.sem
            .clone()
            .try_acquire_many_owned(self.units_for(bytes))
            .ok()
            .map(|permit| Held { _permit: permit })
    }

    /// Bytes of the budget in use now.
    pub fn in_use(&self) -> usize {
        (self.units as usize).saturating_sub(self.sem.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_return_when_dropped() {
        let b = Budget::new(10 * UNIT);
        let a = b.try_take(4 * UNIT).expect("room");
        let c = b.try_take(6 * UNIT).expect("room");
        assert_eq!(b.in_use(), 10 * UNIT);
        assert!(b.try_take(1).is_none(), "spent budget refuses");
        drop(a);
        assert_eq!(b.in_use(), 6 * UNIT);
        assert!(b.try_take(4 * UNIT).is_some());
        drop(c);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn small_messages_take_a_unit_and_huge_ones_the_whole_budget() {
        let b = Budget::new(4 * UNIT);
        let tiny = b.try_take(0).expect("room");
        assert_eq!(b.in_use(), UNIT);
        drop(tiny);
        let huge = b
            .try_take(100 * UNIT)
            .expect("a huge message still fits alone");
        assert_eq!(b.in_use(), 4 * UNIT);
        drop(huge);
    }

    #[tokio::test]
    async fn take_waits_for_room() {
        let b = Budget::new(2 * UNIT);
        let first = b.take(2 * UNIT).await;
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.take(UNIT).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no room yet");
        drop(first);
        let _second = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("room came back")
            .expect("task ran");
    }
}
