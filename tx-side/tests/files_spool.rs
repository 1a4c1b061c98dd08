//! Files spool: an opaque file crosses as chunks that rebuild it byte for
//! byte, under its SHA-256, without ever queueing the whole file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_shared::config::{OnDone, SpoolConfig, SpoolKind};
use weir_shared::record::FileChunk;
use weir_tx::pipeline::source;
use weir_tx::pipeline::{AfterSend, SourceItem};
use weir_tx::telemetry::Telemetry;

fn files_spool(dir: &Path, chunk_bytes: u32) -> SpoolConfig {
    SpoolConfig {
        backfill: false,
        name: "files".into(),
        dir: dir.to_owned(),
        kind: SpoolKind::Files,
        format: None,
        chunk_bytes: Some(chunk_bytes),
        tz: None,
        tag: None,
        discrete_tags: vec![],
        max_file_bytes: 1 << 30,
        on_done: OnDone::Move,
        scan_interval: Duration::from_millis(20),
        tag_table: None,
        csv: None,
    }
}

/// Deterministic bytes that do not compress to nothing.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write under a temporary name, then rename into `incoming/`.
fn drop_in(dirs: &source::SpoolDirs, name: &str, data: &[u8]) {
    let tmp = dirs.incoming.join(format!("{name}.part"));
    std::fs::write(&tmp, data).expect("write");
    std::fs::rename(&tmp, dirs.incoming.join(name)).expect("rename");
}

struct Received {
    chunks: Vec<FileChunk>,
    done: Vec<(std::path::PathBuf, AfterSend)>,
}

/// Items until `files` done markers arrived (or 10 s passed).
async fn receive(rx: &mut mpsc::Receiver<SourceItem>, files: usize) -> Received {
    let mut got = Received {
        chunks: Vec::new(),
        done: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.done.len() < files {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(SourceItem::Chunk(c, _permit))) => got.chunks.push(c),
            Ok(Some(SourceItem::FileDone(_, d))) => got.done.push((d.working, d.then)),
            Ok(Some(SourceItem::Record(..))) => panic!("a files spool sends chunks only"),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_rebuild_the_file_under_its_sha256() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dirs = source::SpoolDirs::create(dir.path()).expect("dirs");
    let (tx, mut rx) = mpsc::channel(100_000);
    let cancel = CancellationToken::new();
    let telemetry = Arc::new(Telemetry::default());
    let task = tokio::spawn(source::run(
        files_spool(dir.path(), 4096),
        telemetry.clone(),
        cancel.clone(),
        tx,
    ));

    // 25 whole chunks and a short one; a file of exactly one chunk; an
    // empty file, which still crosses as one empty chunk.
    let big = bytes(25 * 4096 + 1234, 7);
    let exact = bytes(4096, 9);
    drop_in(&dirs, "plant.bin", &big);
    drop_in(&dirs, "one.bin", &exact);
    drop_in(&dirs, "empty.bin", b"");
    let got = receive(&mut rx, 3).await;
    cancel.cancel();
    let _ = task.await;
    assert_eq!(got.done.len(), 3, "every file handed over");

    for (name, data) in [
        ("plant.bin", &big[..]),
        ("one.bin", &exact[..]),
        ("empty.bin", &[][..]),
    ] {
        let chunks: Vec<&FileChunk> = got.chunks.iter().filter(|c| c.name == name).collect();
        let n = data.len().div_ceil(4096).max(1);
        assert_eq!(chunks.len(), n, "{name}: chunk count");
        let mut rebuilt = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index as usize, i, "{name}: in order");
            assert_eq!(c.chunks as usize, n, "{name}: chunks");
            assert_eq!(c.offset, rebuilt.len() as u64, "{name}: offset");
            assert_eq!(c.size, data.len() as u64, "{name}: size");
            assert_eq!(c.file_id, chunks[0].file_id, "{name}: one transfer");
            assert!(c.data.len() <= 4096, "{name}: chunk size");
            rebuilt.extend_from_slice(&c.data);
        }
        assert_eq!(rebuilt, data, "{name}: the chunks rebuild the file");
        let sha = ring::digest::digest(&ring::digest::SHA256, data);
        assert_eq!(&chunks[0].sha256[..], sha.as_ref(), "{name}: SHA-256");
        let mtime = std::fs::metadata(dirs.working.join(name))
            .and_then(|m| m.modified())
            .expect("mtime")
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch");
        assert_eq!(chunks[0].mtime_ns, mtime.as_nanos() as i64, "{name}: mtime");
        // The file waits in working/ until its last block is sent, then
        // moves to done/.
        assert!(got.done.contains(&(
            dirs.working.join(name),
            AfterSend::Move(dirs.done.join(name))
        )));
    }
    let ids: std::collections::BTreeSet<u64> = got.chunks.iter().map(|c| c.file_id).collect();
    assert_eq!(ids.len(), 3, "one file id per transfer");
    assert_eq!(
        telemetry
            .file_transfers
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_streamed_not_queued_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dirs = source::SpoolDirs::create(dir.path()).expect("dirs");
    let (tx, mut rx) = mpsc::channel(100_000);
    let cancel = CancellationToken::new();
    let chunk = 1024 * 1024;
    let task = tokio::spawn(source::run(
        files_spool(dir.path(), chunk),
        Arc::new(Telemetry::default()),
        cancel.clone(),
        tx,
    ));
    let data = bytes(24 * chunk as usize, 3);
    drop_in(&dirs, "big.bin", &data);

    // Nobody takes the chunks: the source stops at its byte budget (8 MiB)
    // although the channel has room for thousands of items.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rx.len() < 8 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.len(), 8, "8 MiB of 1 MiB chunks queued, no more");

    // Taking them lets the rest through, and the file arrives whole.
    let got = receive(&mut rx, 1).await;
    cancel.cancel();
    let _ = task.await;
    let rebuilt: Vec<u8> = got.chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(rebuilt.len(), data.len());
    assert!(rebuilt == data, "rebuilt byte for byte");
}

#[test]
fn the_example_files_spool_validates() {
    // systemd/weir-tx.toml ends with a commented-out files spool: with the
    // comment marks taken off, the config must still validate.
    let example = include_str!("../../systemd/weir-tx.toml");
    let start = example.find("# [[spool]]").expect("files spool example");
    let uncommented = example[..start]
        .lines()
        .chain(
            example[start..]
                .lines()
                .map(|l| l.strip_prefix("# ").unwrap_or(l)),
        )
        .collect::<Vec<_>>()
        .join("\n");
    let cfg: weir_shared::config::TxConfig = toml::from_str(&uncommented).expect("parses");
    let files = cfg.spools.last().expect("a spool").clone();
    assert_eq!(files.kind, SpoolKind::Files);
    assert_eq!(files.chunk_size(), 64 * 1024);
    cfg.validate().expect("validates");
}
