//! `weir-tx` command line: run the sender, send files now, check a config,
//! make a key, verify the audit log.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_shared::config::{DEFAULT_CHUNK_BYTES, TxConfig, ValidTx};
use weir_shared::formats::Format;
use weir_tx::resend::{ResendOptions, Selection};

mod notify;

#[derive(Parser)]
#[command(
    name = "weir-tx",
    version,
    about = "Weir sender: OT side of a one-way data diode link"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sender until SIGTERM / SIGINT.
    Run {
        /// Configuration file.
        #[arg(long, short, env = "WEIR_TX_CONFIG")]
        config: PathBuf,
    },
    /// Send files across now, with a progress bar, and exit once every
    /// block was sent. The files are left where they are. Uses the
    /// config's link, keys and lanes; its spools and listeners stay idle.
    Send {
        /// Configuration file.
        #[arg(long, short, env = "WEIR_TX_CONFIG")]
        config: PathBuf,
        /// Parse the files as historian exports of this format
        /// (pi-webapi-json, aveva-csv, proficy-csv, influx-lp, opcua-jsonl,
        /// piarc-csv; ignition-csv and generic-csv need a spool's tag table
        /// or column mapping); without it they cross as opaque files.
        #[arg(long)]
        format: Option<Format>,
        /// IANA time zone of local timestamps (aveva-csv, proficy-csv,
        /// piarc-csv need it).
        #[arg(long)]
        tz: Option<chrono_tz::Tz>,
        /// The exports are historical back-fill: points are flagged
        /// historical, so the receiver's too-old check leaves them alone.
        #[arg(long)]
        backfill: bool,
        /// Chunk size of opaque files, bytes; at least 1 KiB below the
        /// bulk lane's max_batch_bytes.
        #[arg(long, default_value_t = DEFAULT_CHUNK_BYTES)]
        chunk_bytes: u32,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// The files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Send again files a spool already sent (from its done/), to fill a
    /// gap the receiver reported: by name, or every file modified in a
    /// time range. They are read as the spool reads them, their points
    /// flagged historical; the receiver withholds those it already has.
    Resend {
        /// Configuration file.
        #[arg(long, short, env = "WEIR_TX_CONFIG")]
        config: PathBuf,
        /// The `[[spool]]` whose files to send again.
        #[arg(long)]
        spool: String,
        /// Files of the spool's done/, by name (or path inside done/).
        #[arg(long = "file", value_name = "FILE", num_args = 1.., required_unless_present = "since", conflicts_with_all = ["since", "until"])]
        files: Vec<PathBuf>,
        /// Every file of done/ modified at or after this time (RFC 3339,
        /// e.g. 2024-03-06T08:00:00Z).
        #[arg(long, value_parser = weir_tx::resend::parse_rfc3339)]
        since: Option<SystemTime>,
        /// … and before this time (RFC 3339; default: now).
        #[arg(long, requires = "since", value_parser = weir_tx::resend::parse_rfc3339)]
        until: Option<SystemTime>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Validate a configuration file (and its key files) and exit.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a fresh pre-shared key file (mode 0600), in the one format
    /// `weir-tx keygen` and `weir-rx keygen` both write: make it on either
    /// host, copy it to the other.
    Keygen(weir_service::keys::KeygenArgs),
    /// The hash-chained audit log (`audit.path`).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain: print the record count and head hash, or name the
    /// first bad line and why (exit 1). The file: `--path`, else
    /// `audit.path` of `--config`, else the default.
    Verify {
        /// The audit log file.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Configuration file naming it (`audit.path`).
        #[arg(long, short, env = "WEIR_TX_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Read, parse and validate a config file.
fn load(path: &Path) -> anyhow::Result<(ValidTx, [u8; 8])> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: TxConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let valid = raw
        .validate()
        .with_context(|| format!("in {}", path.display()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&digest.as_ref()[..8]);
    Ok((valid, fp))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `send` draws a progress bar: only warnings may interrupt it.
    let default_filter = match cli.command {
        Command::Send { .. } | Command::Resend { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Audit {
            command: AuditCommand::Verify { path, config },
        } => {
            let path = match (path, config) {
                (Some(p), _) => p,
                (None, Some(c)) => load(&c)?.0.raw.audit_path(),
                (None, None) => PathBuf::from("/var/lib/weir/tx-audit.jsonl"),
            };
            weir_service::audit::verify_command(&path)
        }
        Command::Keygen(args) => weir_service::keys::keygen_command(&args),
        Command::CheckConfig { config } => {
            let (cfg, _) = load(&config)?;
            let keys = weir_tx::keys::load_keyring(&cfg.raw.keys.files)?;
            keys.get(weir_shared::wire::KeyId(cfg.raw.keys.active_key_id))
                .with_context(|| {
                    format!(
                        "config key `keys.active_key_id`: no key file has id {}",
                        cfg.raw.keys.active_key_id
                    )
                })?;
            println!(
                "{}: ok (symbol size {} B, datagram {} B, {} spool(s))",
                config.display(),
                cfg.symbol_size,
                cfg.datagram_bytes,
                cfg.raw.spools.len()
            );
            Ok(())
        }
        Command::Send {
            config,
            format,
            tz,
            backfill,
            chunk_bytes,
            quiet,
            paths,
        } => {
            let (cfg, fingerprint) = load(&config)?;
            let keys = weir_tx::keys::load_keyring(&cfg.raw.keys.files)?;
            let opts = weir_tx::push::PushOptions {
                paths,
                format,
                tz,
                backfill,
                chunk_bytes,
                progress: !quiet,
            };
            let summary =
                run_push(|cancel| weir_tx::push::push(cfg, keys, fingerprint, opts, cancel))?;
            println!("{summary}");
            anyhow::ensure!(summary.complete(), "not every file was sent");
            Ok(())
        }
        Command::Resend {
            config,
            spool,
            files,
            since,
            until,
            quiet,
        } => {
            let selection = match since {
                Some(since) => Selection::Modified { since, until },
                None => Selection::Named(files),
            };
            let opts = ResendOptions {
                spool,
                selection,
                progress: !quiet,
            };
            resend(&config, &opts)
        }
        Command::Run { config } => run(&config),
    }
}

/// `weir-tx run`: the sender until SIGTERM / SIGINT, then its counters.
fn run(config: &Path) -> anyhow::Result<()> {
    let (cfg, fingerprint) = load(config)?;
    let keys = weir_tx::keys::load_keyring(&cfg.raw.keys.files)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (metrics, rate) = (cfg.metrics, cfg.rate_bytes_per_sec);
    rt.block_on(async move {
        weir_tx::metrics::install(metrics)?;
        let mut handle = weir_tx::run(cfg, keys, fingerprint).await?;
        if metrics.is_some() {
            weir_tx::metrics::spawn(&handle, rate);
        }
        weir_service::notify::ready(&notify::status_line(&handle.telemetry));
        let telemetry = handle.telemetry.clone();
        weir_service::notify::spawn_keepalive(move || notify::status_line(&telemetry));
        let cancel = handle.cancel_token();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("Shutting down: draining what was taken.");
            weir_service::notify::stopping("stopping: sending what was taken");
            cancel.cancel();
        });
        handle
            .join()
            .await
            .inspect_err(weir_service::notify::failed)?;
        let t = handle.telemetry.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            records = t.records,
            blocks = t.blocks,
            datagrams = t.datagrams,
            files = t.files_done,
            blocks_repeated = get(&handle.telemetry.blocks_repeated),
            repeats_skipped = get(&handle.telemetry.repeats_skipped),
            "Sender stopped."
        );
        Ok(())
    })
}

/// `weir-tx resend`: check everything, push, print the summary.
/// Run a one-shot push (`send`, `resend`) on its own runtime; a signal
/// stops taking input, and what was taken is still sent.
fn run_push<F>(
    push: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
) -> anyhow::Result<weir_tx::push::PushSummary>
where
    F: std::future::Future<Output = anyhow::Result<weir_tx::push::PushSummary>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::warn!("Interrupted: sending what was taken, then stopping.");
            on_signal.cancel();
        });
        push(cancel).await
    })
}

fn resend(config: &Path, opts: &ResendOptions) -> anyhow::Result<()> {
    let (cfg, fingerprint) = load(config)?;
    let keys = weir_tx::keys::load_keyring(&cfg.raw.keys.files)?;
    // Every mistake is reported before anything is sent.
    let job = weir_tx::resend::plan(&cfg, opts)?;
    let summary = run_push(|cancel| weir_tx::push::push_job(cfg, keys, fingerprint, job, cancel))?;
    println!("spool {}: {summary}", opts.spool);
    anyhow::ensure!(summary.complete(), "not every file was sent");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
