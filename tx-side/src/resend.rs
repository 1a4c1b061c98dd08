//! `weir-tx resend`: send again files that a spool already sent.
//!
//! ```text
//!  [[spool]] NAME ── done/ ──(--file NAME… | --since T [--until T], by mtime)──> files
//!                     read as the spool reads them (format, zone, tags, tag table,
//!                     CSV mapping, size limit); points flagged historical
//!  files ──push::push_job (a one-shot session, as `weir-tx send`)──> link ──> weir-rx
//! ```
//!
//! A diode cannot ask for anything again, so the only retransmission is
//! the one an operator starts once the receiver reported a gap (its gaps
//! topic says what was lost and when). `done/` means *sent*, so that is
//! where the files are: picked by name, or every file whose modification
//! time falls in a range. That is the time the export was written: moving
//! a file between spool directories keeps it. The files stay in `done/`.
//!
//! The points are flagged historical (`hist: true`), as `send --backfill`
//! flags them: they are past samples arriving late, not live readings.
//! Consumers reacting to live values can tell them apart, and the
//! receiver's too-old check does not mark them suspect for crossing days
//! after they were measured.
//!
//! On the receiver, a resent point it already published is an exact
//! duplicate (same tag, time, value and quality) and is withheld and
//! counted (`dq_duplicates`), as long as the receiver still remembers it
//! (`dq.duplicate_memory`); a point it never got is published. An opaque
//! file (a `kind = "files"` spool) is rebuilt again; one identical to the
//! file already in the output directory is not written twice.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, anyhow, bail};
use weir_shared::config::{OnDone, SpoolConfig, ValidTx};

use crate::pipeline::source::{self, Intake};
use crate::push::PushJob;

/// Which files of a spool's `done/` to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These files: bare names, or paths of files inside `done/`.
    Named(Vec<PathBuf>),
    /// Every file modified at or after `since` and before `until` (now,
    /// when `None`), oldest first.
    Modified {
        /// Start of the range (inclusive).
        since: SystemTime,
        /// End of the range (exclusive).
        until: Option<SystemTime>,
    },
}

/// What to resend.
#[derive(Debug, Clone)]
pub struct ResendOptions {
    /// The spool's `name`.
    pub spool: String,
    /// Its files.
    pub selection: Selection,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Find the spool, its files and how to read them, for
/// [`crate::push::push_job`] to send. Nothing is sent here: every mistake
/// (an unknown spool, a file not in `done/`) is reported before the first
/// datagram leaves.
pub fn plan(cfg: &ValidTx, opts: &ResendOptions) -> anyhow::Result<PushJob> {
    let spool = find_spool(cfg, &opts.spool)?;
    let done = spool.dir.join("done");
    if !done.is_dir() {
        bail!(
            "spool `{}` has no done/ directory ({}): nothing was sent from it yet{}",
            spool.name,
            done.display(),
            deletes_hint(spool)
        );
    }
    let paths = match &opts.selection {
        Selection::Named(given) => given
            .iter()
            .map(|g| named(spool, &done, g))
            .collect::<anyhow::Result<Vec<_>>>()?,
        Selection::Modified { since, until } => modified(spool, &done, *since, *until)?,
    };
    Ok(PushJob {
        paths,
        intake: intake(spool)?,
        max_bytes: spool.max_file_bytes,
        progress: opts.progress,
    })
}

fn find_spool<'a>(cfg: &'a ValidTx, name: &str) -> anyhow::Result<&'a SpoolConfig> {
    cfg.raw
        .spools
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = cfg.raw.spools.iter().map(|s| s.name.as_str()).collect();
            if known.is_empty() {
                anyhow!("--spool {name}: the config has no [[spool]]")
            } else {
                anyhow!(
                    "--spool {name}: no [[spool]] has this name (the config has: {})",
                    known.join(", ")
                )
            }
        })
}

/// A spool that deletes what it sent has nothing in `done/`.
fn deletes_hint(spool: &SpoolConfig) -> &'static str {
    if spool.on_done == OnDone::Delete {
        " (this spool deletes files once sent: on_done = \"delete\")"
    } else {
        ""
    }
}

/// The file of `done/` an operator named, by bare name or by a path that
/// must lead into `done/` itself.
fn named(spool: &SpoolConfig, done: &Path, given: &Path) -> anyhow::Result<PathBuf> {
    let name = given
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a file name", given.display()))?;
    if let Some(dir) = given.parent().filter(|p| !p.as_os_str().is_empty()) {
        let same = match (std::fs::canonicalize(dir), std::fs::canonicalize(done)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            bail!(
                "{}: not in done/ of spool `{}` ({}); resend only sends what the spool sent (use `weir-tx send` for other files)",
                given.display(),
                spool.name,
                done.display()
            );
        }
    }
    let path = done.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let elsewhere = ["incoming", "working", "quarantine"]
        .into_iter()
        .find(|d| spool.dir.join(d).join(name).is_file());
    let hint = match elsewhere {
        Some("quarantine") => {
            "; it is in quarantine/ (its .reason file says why): fix it and move it to incoming/"
                .to_owned()
        }
        Some(d) => format!("; it is in {d}/ and has not been sent yet"),
        None => deletes_hint(spool).to_owned(),
    };
    bail!(
        "{name}: not in done/ of spool `{}` ({}){hint}",
        spool.name,
        done.display()
    )
}

/// The files of `done/` modified in `since..until`, oldest first.
fn modified(
    spool: &SpoolConfig,
    done: &Path,
    since: SystemTime,
    until: Option<SystemTime>,
) -> anyhow::Result<Vec<PathBuf>> {
    let until = until.unwrap_or_else(SystemTime::now);
    if until <= since {
        bail!(
            "--until {} is not after --since {}",
            rfc3339(until),
            rfc3339(since)
        );
    }
    let files =
        source::list(done).with_context(|| format!("reading done/ of spool `{}`", spool.name))?;
    let picked: Vec<PathBuf> = files
        .into_iter()
        .filter(|(_, _, mtime)| (since..until).contains(mtime))
        .map(|(name, ..)| done.join(name))
        .collect();
    if picked.is_empty() {
        bail!(
            "no file in done/ of spool `{}` ({}) was modified between {} and {}{}",
            spool.name,
            done.display(),
            rfc3339(since),
            rfc3339(until),
            deletes_hint(spool)
        );
    }
    Ok(picked)
}

/// How the spool reads its files, with points flagged historical.
fn intake(spool: &SpoolConfig) -> anyhow::Result<Intake> {
    let intake = Intake::for_spool(spool).map_err(|e| anyhow!("spool `{}`: {e}", spool.name))?;
    Ok(match intake {
        Intake::Historian(format, mut ctx) => {
            ctx.historical = true;
            Intake::Historian(format, ctx)
        }
        files @ Intake::Files(_) => files,
    })
}

/// A time as RFC 3339, UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parse an RFC 3339 time (`2024-03-06T08:00:00Z`, `…+01:00`); for the
/// command line.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(SystemTime::from)
        .map_err(|e| format!("{e}: expected RFC 3339, e.g. 2024-03-06T08:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(dir: &Path, on_done: &str) -> ValidTx {
        let text = format!(
            r#"
[link]
destination = "127.0.0.1:4000"
rate_mbps = 10.0
[keys]
files = ["k"]
active_key_id = 1
[[spool]]
name = "aveva"
dir = "{}"
format = "aveva-csv"
tz = "America/Chicago"
on_done = "{on_done}"
"#,
            dir.display()
        );
        let raw: weir_shared::config::TxConfig = toml::from_str(&text).expect("config");
        raw.validate().expect("valid")
    }

    fn opts(spool: &str, selection: Selection) -> ResendOptions {
        ResendOptions {
            spool: spool.into(),
            selection,
            progress: false,
        }
    }

    fn touch(path: &Path, mtime: SystemTime) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, "DateTime,TagName,Value\n").expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        f.set_modified(mtime).expect("mtime");
    }

    #[test]
    fn named_files_come_from_done_and_mistakes_say_where_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), "move");
        let now = SystemTime::now();
        touch(&dir.path().join("done/a.csv"), now);
        touch(&dir.path().join("quarantine/q.csv"), now);
        touch(&dir.path().join("incoming/i.csv"), now);
        let job = plan(&c, &opts("aveva", Selection::Named(vec!["a.csv".into()]))).expect("plan");
        assert_eq!(job.paths, vec![dir.path().join("done/a.csv")]);
        assert_eq!(job.max_bytes, 256 * 1024 * 1024);
        assert!(
            matches!(&job.intake, Intake::Historian(_, ctx) if ctx.historical && ctx.tz.is_some())
        );
        // A path into done/ is fine.
        let full = dir.path().join("done/a.csv");
        assert!(plan(&c, &opts("aveva", Selection::Named(vec![full]))).is_ok());

        let err = |given: &str| {
            plan(&c, &opts("aveva", Selection::Named(vec![given.into()])))
                .map(|_| ())
                .expect_err("refused")
                .to_string()
        };
        assert!(
            err("q.csv").contains("it is in quarantine/"),
            "{}",
            err("q.csv")
        );
        assert!(
            err("i.csv").contains("it is in incoming/"),
            "{}",
            err("i.csv")
        );
        assert!(err("nope.csv").contains("not in done/ of spool `aveva`"));
        let outside = dir.path().join("incoming/i.csv").display().to_string();
        assert!(err(&outside).contains("not in done/"), "{}", err(&outside));
        let unknown = plan(&c, &opts("pi", Selection::Named(vec!["a.csv".into()])))
            .map(|_| ())
            .expect_err("unknown spool")
            .to_string();
        assert!(
            unknown.contains("--spool pi") && unknown.contains("aveva"),
            "{unknown}"
        );
    }

    #[test]
    fn a_time_range_picks_files_by_modification_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), "move");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_hours(474_918);
        let hour = Duration::from_hours(1);
        for (name, at) in [
            ("a.csv", t0),
            ("b.csv", t0 + hour),
            ("c.csv", t0 + 2 * hour),
        ] {
            touch(&dir.path().join("done").join(name), at);
        }
        let pick = |since, until| {
            plan(&c, &opts("aveva", Selection::Modified { since, until })).map(|j| {
                j.paths
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(pick(t0 + hour, None).expect("b, c"), ["b.csv", "c.csv"]);
        assert_eq!(
            pick(t0, Some(t0 + 2 * hour)).expect("a, b"),
            ["a.csv", "b.csv"]
        );
        let none = pick(t0 + 3 * hour, None).expect_err("nothing").to_string();
        assert!(none.contains("no file in done/"), "{none}");
        let backwards = pick(t0 + hour, Some(t0))
            .expect_err("backwards")
            .to_string();
        assert!(backwards.contains("is not after"), "{backwards}");
    }

    #[test]
    fn a_spool_that_deletes_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cfg(dir.path(), "delete");
        let e = plan(&c, &opts("aveva", Selection::Named(vec!["a.csv".into()])))
            .map(|_| ())
            .expect_err("no done/")
            .to_string();
        assert!(e.contains("on_done = \"delete\""), "{e}");
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = parse_rfc3339("2024-03-06T08:00:00+01:00").expect("parse");
        assert_eq!(rfc3339(t), "2024-03-06T07:00:00Z");
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
