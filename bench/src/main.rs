//! `weir-bench` command line.
//!
//! ```text
//! cargo run --release -p weir-bench -- e2e --points 2000000
//! cargo run --release -p weir-bench -- e2e --points 1000000 --batch-points 50
//! cargo run --release -p weir-bench -- outbox
//! cargo run --release -p weir-bench -- targets            # quick sweeps
//! cargo run --release -p weir-bench -- targets --full     # fuller sweeps
//! ```
//!
//! Stage micro-benchmarks are not here: they are `cargo bench -p weir-bench`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use weir_bench::e2e::{self, Options, Outcome};
use weir_bench::{outbox, targets};

#[derive(Parser)]
#[command(
    name = "weir-bench",
    about = "Weir benchmarks: end-to-end throughput over loopback, outbox commit throughput, link targets"
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
        /// Points per MQTT message (receiver `mqtt.batch_points`; 1: one
        /// message per point, above 1: a JSON array per topic and block).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        batch_points: u64,
        /// Freeze the broker (SIGSTOP) until every block is in the
        /// receiver's outbox, then thaw it and time the drain alone.
        #[arg(long)]
        drain: bool,
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
    /// Durable group commits into the receiver's redb outbox, then reading
    /// back and deleting, through the real writer and reader tasks; reports
    /// entries/s and MiB/s per entry size.
    Outbox {
        /// Entry payload sizes, bytes (alert block, bulk frames).
        #[arg(long, value_delimiter = ',', default_value = "1024,65536,1048576")]
        sizes: Vec<usize>,
        /// Payload bytes per size in the back-to-back phases.
        #[arg(long, default_value_t = 256 << 20)]
        bytes_per_size: u64,
        /// Fewest entries per back-to-back phase.
        #[arg(long, default_value_t = 256)]
        min_count: u64,
        /// Most entries per back-to-back phase.
        #[arg(long, default_value_t = 20_000)]
        max_count: u64,
        /// Entries committed one at a time (one fsync each).
        #[arg(long, default_value_t = 100)]
        single: u64,
        /// Reader window (receiver `outbox.window_blocks`).
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Directory on the disk to measure (not tmpfs); default: the
        /// system's temporary directory.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Measure the link targets (goodput clean and at 5 % loss, CPU per
    /// MB, RSS at full rate and under a junk flood, pacing accuracy) with
    /// the stage micro-limits, print the table, then sweep loss, block
    /// size, repair ratio and compression; CSV and PNG go into
    /// `<results>/<timestamp>/`.
    Targets {
        /// Runs per target scenario (medians reported); at least 3.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Payload per clean run, MB (lossy runs carry half).
        #[arg(long, default_value_t = 256)]
        payload_mb: u64,
        /// Quick sweeps: one run per point, few points (the default).
        #[arg(long, conflicts_with = "full")]
        quick: bool,
        /// Fuller sweeps: three runs per point, more points.
        #[arg(long)]
        full: bool,
        /// Targets only, no sweeps.
        #[arg(long)]
        no_sweeps: bool,
        /// Results folder.
        #[arg(long, default_value = "bench/results")]
        results: std::path::PathBuf,
        /// Seed of the data and the loss pattern.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Internal: run one scenario in this process and print its peak
        /// RSS (the RSS figures come from such child processes).
        #[arg(long, hide = true)]
        probe: Option<targets::Probe>,
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
            batch_points,
            drain,
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
                batch_points: usize::try_from(batch_points)?,
                drain,
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
        Command::Outbox {
            sizes,
            bytes_per_size,
            min_count,
            max_count,
            single,
            window,
            dir,
        } => {
            let report = outbox::run(&outbox::Options {
                sizes,
                bytes_per_size,
                min_count,
                max_count,
                single,
                window,
                dir,
            })?;
            print!("{}", report.table());
            Ok(())
        }
        Command::Targets {
            runs,
            payload_mb,
            quick: _,
            full,
            no_sweeps,
            results,
            seed,
            probe,
        } => {
            targets::run(&targets::Options {
                runs,
                payload_bytes: payload_mb * 1_000_000,
                full,
                no_sweeps,
                results,
                seed,
                probe,
            })?;
            Ok(())
        }
    }
}
