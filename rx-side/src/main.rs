//! `weir-rx` command line: run the receiver, check a config, read the gap
//! ledger, make a key, verify the audit log, report a day.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_shared::config::{RxConfig, ValidRx};

mod notify;

#[derive(Parser)]
#[command(
    name = "weir-rx",
    version,
    about = "Weir receiver: IT side of a one-way data diode link"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the receiver until SIGTERM / SIGINT.
    Run {
        /// Configuration file.
        #[arg(long, short, env = "WEIR_RX_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file (and its key, TLS and password files) and exit.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the gap ledger: every run of records the link lost, with its
    /// source, time span and count (`ledger.gaps_path`).
    Gaps {
        /// Configuration file.
        #[arg(long, short, env = "WEIR_RX_CONFIG")]
        config: PathBuf,
        /// Only gaps written at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
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
    /// Reconcile a day from the audit log: per flow, sent = received + lost,
    /// and the controls the evidence supports (Markdown, or JSON).
    Report {
        /// The day, UTC (YYYY-MM-DD).
        #[arg(long)]
        day: String,
        /// JSON instead of Markdown.
        #[arg(long)]
        json: bool,
        /// Write `weir-report-DAY.json` and `.md` into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        log: AuditLog,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain: print the record count and head hash, or name the
    /// first bad line and why (exit 1).
    Verify {
        #[command(flatten)]
        log: AuditLog,
    },
}

/// Which audit log: `--path`, else `audit.path` of `--config`, else the default.
#[derive(clap::Args)]
struct AuditLog {
    /// The audit log file.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Configuration file naming it (`audit.path`).
    #[arg(long, short, env = "WEIR_RX_CONFIG")]
    config: Option<PathBuf>,
}

impl AuditLog {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match (&self.path, &self.config) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(c)) => Ok(load(c)?.raw.audit_path()),
            (None, None) => Ok(PathBuf::from("/var/lib/weir/rx-audit.jsonl")),
        }
    }
}

/// The SHA-256 of a config file, hex (for the audit log).
fn config_sha256(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, &text);
    Some(weir_shared::audit::hex_bytes(d.as_ref()))
}

/// `weir-rx gaps`: print the ledger and a total.
fn print_gaps(cfg: &ValidRx, since: Option<&str>, json: bool) -> anyhow::Result<()> {
    let since_ns = since
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .with_context(|| format!("--since {s}: not an RFC 3339 time"))
        })
        .transpose()?;
    let path = &cfg.raw.ledger.gaps_path;
    let gaps = weir_rx::pipeline::ledger::read_gaps(path, since_ns)?;
    if json {
        for g in &gaps {
            println!("{g}");
        }
        return Ok(());
    }
    println!(
        "{:<30} {:<14} {:<6} {:>13} {:>10}  {:<30} {:<30} sources",
        "written", "cause", "lane", "blocks", "records", "from", "to"
    );
    let (mut records, mut uncounted) = (0u64, 0u64);
    for g in &gaps {
        let n = g["records"].as_u64();
        match n {
            Some(n) => records += n,
            None => uncounted += 1,
        }
        let blocks = format!("{}..{}", g["first_block"], g["last_block"]);
        let sources: Vec<&str> = g["sources"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let more = if g["sources_complete"].as_bool() == Some(true) {
            ""
        } else {
            " (+ unknown)"
        };
        println!(
            "{:<30} {:<14} {:<6} {:>13} {:>10}  {:<30} {:<30} {}{more}",
            g["ts"].as_str().unwrap_or("?"),
            g["cause"].as_str().unwrap_or("?"),
            g["lane"].as_str().unwrap_or("?"),
            blocks,
            n.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            g["t_first"].as_str().unwrap_or("-"),
            g["t_last"].as_str().unwrap_or("-"),
            sources.join(", "),
        );
    }
    println!(
        "{} gaps, {records} records lost{}",
        gaps.len(),
        if uncounted > 0 {
            format!(" (+ {uncounted} gaps of unknown size)")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn load(path: &Path) -> anyhow::Result<ValidRx> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: RxConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    raw.dq
        .validate()
        .with_context(|| format!("in {}", path.display()))?;
    raw.validate()
        .with_context(|| format!("in {}", path.display()))
}

/// On SIGHUP, read the config again and apply its `[dq]` section (other
/// sections need a restart). A config that does not load is logged and
/// the running one kept.
async fn reload_on_hangup(
    path: PathBuf,
    reload: weir_rx::pipeline::DqReload,
    stats: std::sync::Arc<weir_rx::stats::RxStats>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match load(&path).and_then(|c| Ok(c.raw.dq.validate()?)) {
            Ok(dq) => {
                reload.apply(dq);
                stats.audit.record(
                    "config_reload",
                    serde_json::json!({"file": path.display().to_string(), "sha256": config_sha256(&path),
                        "applied": "[dq]"}),
                );
                tracing::info!(config = %path.display(), "SIGHUP: [dq] reloaded; other sections apply at the next start.");
            }
            Err(e) => {
                stats.audit.record(
                    "config_reload",
                    serde_json::json!({"file": path.display().to_string(), "error": format!("{e:#}")}),
                );
                tracing::error!(config = %path.display(), error = format!("{e:#}"), "SIGHUP: config not reloaded; keeping the running one.");
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Keygen(args) => weir_service::keys::keygen_command(&args),
        Command::CheckConfig { config } => {
            let cfg = load(&config)?;
            let keys = weir_rx::keys::load_keyring(&cfg.raw.keys.files)?;
            // TLS and password files: a bad one stops startup here, by key.
            weir_rx::pipeline::mqtt_tls::Security::load(&cfg.raw.mqtt)
                .with_context(|| format!("in {}", config.display()))?;
            let ids: Vec<u16> = keys.ids().map(|k| k.0).collect();
            println!(
                "{}: ok (key ids {ids:?}, listen {})",
                config.display(),
                cfg.raw.link.listen
            );
            Ok(())
        }
        Command::Gaps {
            config,
            since,
            json,
        } => print_gaps(&load(&config)?, since.as_deref(), json),
        Command::Audit {
            command: AuditCommand::Verify { log },
        } => weir_service::audit::verify_command(&log.path()?),
        Command::Report {
            day,
            json,
            out,
            log,
        } => weir_rx::report::command(&log.path()?, &day, json, out.as_deref()),
        Command::Run { config } => {
            let cfg = load(&config)?;
            let keys = weir_rx::keys::load_keyring(&cfg.raw.keys.files)?;
            // TLS and password files: a bad one stops startup here, by key.
            weir_rx::pipeline::mqtt_tls::Security::load(&cfg.raw.mqtt)
                .with_context(|| format!("in {}", config.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let link_timeout = cfg.raw.link.link_timeout;
            rt.block_on(async move {
                weir_rx::metrics::install(cfg.metrics)?;
                let mut handle = weir_rx::run(cfg, keys).await?;
                handle.stats.audit.record(
                    "config",
                    serde_json::json!({"file": config.display().to_string(), "sha256": config_sha256(&config)}),
                );
                let status = notify::Source::new(&handle, link_timeout);
                weir_service::notify::ready(&status.line());
                weir_service::notify::spawn_keepalive(move || status.line());
                tokio::spawn(reload_on_hangup(
                    config.clone(),
                    handle.dq_reload(),
                    handle.stats.clone(),
                ));
                let cancel = handle.cancel_token();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("Shutting down: publishing what was decoded.");
                    weir_service::notify::stopping("stopping: publishing what was decoded");
                    cancel.cancel();
                });
                handle.join().await.inspect_err(weir_service::notify::failed)?;
                let s = handle.stats.snapshot();
                // The final counters, one JSON line on stdout, for operators
                // and scripts.
                println!("{}", serde_json::to_string(&s)?);
                Ok(())
            })
        }
    }
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
