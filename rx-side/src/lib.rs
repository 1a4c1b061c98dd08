//! `weir-rx`: the IT-side receiver.
//!
//! ```text
//!  UDP (diode) ─> recv ─> verify ─> decode ─> open ─> validate ─> publish ─> MQTT broker
//!                          │          │         │        │
//!                          └──────────┴─────────┴────────┴─> counters (every drop has a reason)
//! ```
//!
//! The receiver can never slow the sender down, so nothing between `recv`
//! and `publish` waits on the broker: when the publish queue is full, whole
//! blocks are shed, counted and reported as gaps.

pub mod audit;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod stats;

pub use pipeline::{RxHandle, run};
