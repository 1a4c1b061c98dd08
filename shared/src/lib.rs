//! Weir's sans-IO core.
//!
//! Everything that can be decided without I/O lives here: the datagram
//! format ([`wire`]), the crypto envelope ([`seal`]), forward error
//! correction ([`fec`]) and how much of it the link needs ([`headroom`]),
//! block reassembly and loss accounting ([`reassembly`]), the record model and batch frames ([`record`]),
//! heartbeats ([`heartbeat`]), the loss ledger ([`ledger`]), file assembly ([`files`]), pacing arithmetic ([`pace`]), the MQTT
//! contract ([`contract`]), configuration ([`config`]) and where secret files
//! are read from ([`credentials`]), and the hash-chained audit log
//! ([`audit`]). No tokio, no
//! sockets, no clock reads, no filesystem: callers pass `now` and buffers,
//! so every piece is deterministic under test.
#![warn(missing_docs)]

pub mod alerts;
pub mod audit;
pub mod config;
pub mod contract;
pub mod credentials;
pub mod dq;
pub mod fec;
pub mod files;
pub mod formats;
pub mod headroom;
pub mod heartbeat;
pub mod lane;
pub mod ledger;
pub mod localtime;
pub mod pace;
pub mod reassembly;
pub mod record;
pub mod seal;
pub mod sparkplug;
pub mod wire;

#[cfg(test)]
mod testutil;
