//! Spool intake: a file still being written is never taken half-written,
//! and a file renamed in is taken at once, long before the next periodic
//! scan.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_shared::config::{OnDone, SpoolConfig, SpoolKind};
use weir_shared::formats::Format;
use weir_shared::record::Record;
use weir_tx::pipeline::SourceItem;
use weir_tx::pipeline::source;
use weir_tx::telemetry::Telemetry;

const ROWS: usize = 400;

fn spool(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        backfill: false,
        name: "aveva".into(),
        dir: dir.to_owned(),
        kind: SpoolKind::Historian,
        format: Some(Format::Aveva),
        chunk_bytes: None,
        tz: Some("UTC".into()),
        tag: None,
        discrete_tags: vec![],
        max_file_bytes: 1 << 30,
        on_done: OnDone::Move,
        scan_interval: Duration::from_millis(50),
        tag_table: None,
        csv: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_written_is_taken_only_when_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = spool(dir.path());
    let dirs = source::SpoolDirs::create(dir.path()).expect("dirs");
    let (tx, mut rx) = mpsc::channel(100_000);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source::run(
        cfg,
        Arc::new(Telemetry::default()),
        cancel.clone(),
        tx,
    ));

    // A writer that appends in place (no rename) for well over several
    // scan intervals, pausing less than one interval between writes and
    // sometimes stopping mid-line.
    let path = dirs.incoming.join("slow.csv");
    let writer = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(b"DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n")
            .expect("header");
        for i in 0..ROWS {
            let line = format!(
                "2024-03-01 00:{:02}:{:02}.0000000,T{i},{i},{i},0,192,192\n",
                i / 60 % 60,
                i % 60
            );
            let (a, b) = line.as_bytes().split_at(line.len() / 2);
            f.write_all(a).expect("write");
            f.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(2));
            f.write_all(b).expect("write");
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    });
    writer.await.expect("writer");

    let mut points = 0;
    let mut done = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(SourceItem::Record(_, Record::Point(_)))) => points += 1,
            Ok(Some(SourceItem::FileDone(..))) => done = true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    cancel.cancel();
    let _ = task.await;
    assert!(done, "the file was taken once complete");
    assert_eq!(points, ROWS, "taken whole: every row, none cut in half");
    assert!(
        !dirs.quarantine.join("slow.csv.rejects").exists(),
        "no half line was rejected"
    );
}

/// An AVEVA export of `rows` rows.
fn export(rows: usize) -> String {
    let mut csv = String::from("DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n");
    for i in 0..rows {
        // Writing to a String cannot fail.
        let _ = writeln!(
            csv,
            "2024-03-01 00:00:{:02}.0000000,T{i},{i},{i},0,192,192",
            i % 60
        );
    }
    csv
}

/// Items until the next done marker (or `deadline`): the points before it
/// and the file it completes.
async fn next_file(
    rx: &mut mpsc::Receiver<SourceItem>,
    deadline: tokio::time::Instant,
) -> Option<(usize, std::path::PathBuf)> {
    let mut points = 0;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(SourceItem::Record(_, Record::Point(_)))) => points += 1,
            Ok(Some(SourceItem::FileDone(_, done))) => return Some((points, done.working)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_file_wakes_the_scan_long_before_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = spool(dir.path());
    cfg.scan_interval = Duration::from_secs(30);
    let dirs = source::SpoolDirs::create(dir.path()).expect("dirs");
    // A file "interrupted by a restart": the source resends it after its
    // watcher is up and before its first scan, so its done marker tells
    // this test when the watcher is listening.
    std::fs::write(dirs.working.join("recovered.csv"), export(2)).expect("write");
    let (tx, mut rx) = mpsc::channel(100_000);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source::run(
        cfg,
        Arc::new(Telemetry::default()),
        cancel.clone(),
        tx,
    ));
    let started = tokio::time::Instant::now() + Duration::from_secs(10);
    let (points, recovered) = next_file(&mut rx, started).await.expect("recovery");
    assert_eq!((points, file_name(&recovered)), (2, "recovered.csv"));

    // Written in place: the wake-ups its writes cause must not bypass
    // the steady rule, so it waits for its 30 s interval.
    std::fs::write(dirs.incoming.join("in_place.csv"), export(5)).expect("write");
    // Written under a temporary name, then renamed in: complete at once.
    let tmp = dirs.incoming.join("renamed.csv.part");
    std::fs::write(&tmp, export(7)).expect("write");
    let dropped = tokio::time::Instant::now();
    std::fs::rename(&tmp, dirs.incoming.join("renamed.csv")).expect("rename");

    let taken = next_file(&mut rx, dropped + Duration::from_secs(5)).await;
    let waited = dropped.elapsed();
    let (points, working) = taken.expect("the renamed file was taken within 5 s");
    assert_eq!(file_name(&working), "renamed.csv");
    assert_eq!(points, 7);
    assert!(waited < Duration::from_secs(5), "took {waited:?}");

    // Nothing else follows soon: the in-place file is still waiting.
    let quiet = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(quiet.is_err(), "nothing but the renamed file was taken");
    assert!(dirs.incoming.join("in_place.csv").exists());
    cancel.cancel();
    task.await.expect("join").expect("source");
}
