//! `weir-tx`: the OT-side sender.
//!
//! ```text
//!  spool dirs ─> source ─> batch ─> seal ─> encode ─> pace ─> send ─> UDP (diode)
//!                                                      ^
//!                                      heartbeat ──────┘
//! ```
//!
//! Each stage is a module in [`pipeline`] and a task connected to the next
//! by a bounded channel. The sender may be slower than its inputs: a full
//! channel back-pressures the source, and spool files simply wait on disk.

pub mod audit;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod push;
pub mod resend;
pub mod state;
pub mod telemetry;

pub use pipeline::{TxHandle, run, run_pushed};
