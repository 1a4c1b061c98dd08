//! `weir-bench`: how fast Weir moves plant data, and where the time goes.
//!
//! Three instruments share this crate:
//!
//! - `benches/stages.rs` (criterion) times each sans-IO stage of
//!   `weir-shared` on realistic sizes, one stage at a time, so a regression
//!   points at its stage;
//! - the `weir-bench e2e` binary runs the real sender and receiver
//!   in-process over loopback into a throwaway Mosquitto and reports what
//!   an operator cares about: points per second end to end, Mbit/s on the
//!   wire, and CPU per component;
//! - the `weir-bench outbox` subcommand times the receiver's durable redb
//!   outbox on its own: group commits with fsync, read back, delete;
//! - the `weir-bench targets` subcommand measures the link against its
//!   targets (goodput clean and lossy, CPU per MB, RSS, pacing accuracy),
//!   runs the parameter sweeps and plots them ([`targets`], [`plot`]).
//!
//! The first two draw their inputs from [`synth`], which writes historian
//! exports shaped like `tests/fixtures/` in any size.

pub mod broker;
pub mod cpu;
pub mod e2e;
pub mod lossy;
pub mod outbox;
pub mod plot;
pub mod synth;
pub mod targets;
