//! `weir-bench` command line.
//!
//! ```text
//! cargo run --release -p weir-bench -- e2e --points 2000000
//! ```
//!
//! Stage micro-benchmarks are not here: they are `cargo bench -p weir-bench`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use weir_bench::e2e::{self, Options, Outcome};

#[derive(Parser)]
#[command(
    name = "weir-bench",
    about = "Weir benchmarks: end-to-end throughput over loopback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a generated spool through weir-tx and weir-rx into a throwaway
    /// Mosquitto and report points/s, wire Mbit/s and CPU.
    E2e {
        /// Points (AVEVA CSV rows) to send.
        #[arg(long, default_value_t = 1_000_000)]
        points: u64,
        /// Spool files to spread them over (0: one per 100 000 points).
        #[arg(long, default_value_t = 0)]
        files: u64,
        /// Sender pacing rate, Mbit/s on the wire.
        #[arg(long, default_value_t = 5000.0)]
        rate_mbps: f64,
        /// Percent of datagrams dropped by a forwarder between the two
        /// (0: direct, no forwarder).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// MQTT publishes in flight (receiver `mqtt.inflight`).
        #[arg(long, default_value_t = 100)]
        inflight: u16,
        /// Worker threads per runtime (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Seed of the generated data and the loss pattern.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Give up when no counter moved for this many seconds.
        #[arg(long, default_value_t = 20)]
        stall_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::E2e {
            points,
            files,
            rate_mbps,
            loss,
            inflight,
            workers,
            seed,
            timeout_secs,
            stall_secs,
        } => {
            let opts = Options {
                points,
                files,
                rate_mbps,
                loss_pct: loss,
                inflight,
                workers,
                seed,
                timeout: Duration::from_secs(timeout_secs),
                stall: Duration::from_secs(stall_secs),
            };
            let report = e2e::run(&opts)?;
            print!("{}", report.table());
            if report.outcome != Outcome::Complete {
                anyhow::bail!("run incomplete: {:?}", report.outcome);
            }
            Ok(())
        }
    }
}
