//! Lanes: priority classes on the link.
//!
//! Alerts must not wait behind megabytes of historian backlog, so each lane
//! has its own block sequence, batching policy and repair ratio, and the
//! sender serves the alert lane first.

use serde::{Deserialize, Serialize};

/// A priority class on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Lane {
    /// Small blocks, sent at once, more repair, strict priority.
    Alert = 0,
    /// Historian data and files, batched by size or age.
    Bulk = 1,
}

/// Number of lanes; lane values are `0..LANES`.
pub const LANES: usize = 2;

impl Lane {
    /// Every lane, in priority order.
    pub const ALL: [Lane; LANES] = [Lane::Alert, Lane::Bulk];

    /// The lane with this wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Alert),
            1 => Some(Self::Bulk),
            _ => None,
        }
    }

    /// Index into per-lane arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name used in logs, metrics and topics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Bulk => "bulk",
        }
    }
}
