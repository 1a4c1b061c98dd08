//! Daemon I/O shared by `weir-tx` and `weir-rx`: the parts of a running
//! service that both programs need the same, written once.
//!
//! - [`notify`]: systemd service notifications (READY, STATUS, WATCHDOG,
//!   STOPPING);
//! - [`audit`]: the hash-chained audit log file (writer thread, chain
//!   resumed and verified at start, `audit verify`);
//! - [`keys`]: `keygen`, the pre-shared key file either host can write;
//! - [`priority`]: bulk work on threads below the alert path's priority.
//!
//! These touch the clock, the disk and the tokio runtime, so they stay out
//! of the sans-IO core (`weir-shared`, which never depends on tokio); the
//! decisions they need (the chain, the key file format) live there.

#![warn(missing_docs)]

pub mod audit;
pub mod keys;
pub mod notify;
pub mod priority;
