//! `weir-rx` command line: run the receiver, check a config.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_shared::config::{RxConfig, ValidRx};

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
async fn reload_on_hangup(path: PathBuf, reload: weir_rx::pipeline::DqReload) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match load(&path).and_then(|c| Ok(c.raw.dq.validate()?)) {
            Ok(dq) => {
                reload.apply(dq);
                tracing::info!(config = %path.display(), "SIGHUP: [dq] reloaded; other sections apply at the next start.");
            }
            Err(e) => {
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
        Command::Run { config } => {
            let cfg = load(&config)?;
            let keys = weir_rx::keys::load_keyring(&cfg.raw.keys.files)?;
            // TLS and password files: a bad one stops startup here, by key.
            weir_rx::pipeline::mqtt_tls::Security::load(&cfg.raw.mqtt)
                .with_context(|| format!("in {}", config.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut handle = weir_rx::run(cfg, keys).await?;
                tokio::spawn(reload_on_hangup(config.clone(), handle.dq_reload()));
                let cancel = handle.cancel_token();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("Shutting down: publishing what was decoded.");
                    cancel.cancel();
                });
                handle.join().await?;
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
