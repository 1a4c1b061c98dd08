//! Alert back-pressure: when the alert lane backs up, alerts wait on disk,
//! in order, and survive a restart; only a full queue drops them, counted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_shared::alerts::AlertContext;
use weir_shared::alerts::syslog::parse_syslog;
use weir_shared::config::AlertQueueConfig;
use weir_shared::lane::Lane;
use weir_shared::record::{Alert, BatchBuilder, Record};
use weir_tx::pipeline::overflow::{self, Intake, SPILL_CAPACITY};
use weir_tx::pipeline::{SourceItem, StageError};
use weir_tx::telemetry::Telemetry;

/// Bound on every wait: generous, never part of an assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn alert(i: usize) -> Alert {
    let ctx = AlertContext {
        receive_time_ns: 1_700_000_000_000_000_000,
        tz: chrono_tz::UTC,
        max_message_bytes: 64 * 1024,
    };
    let msg = format!("<11>1 2024-03-01T00:00:00Z plc7 app - ID{i} - alert number {i}");
    parse_syslog(msg.as_bytes(), &ctx).expect("test alert parses")
}

/// An alert queue in front of an alert channel of `capacity` that nobody
/// reads until the test does.
struct Queue {
    intake: Intake,
    alert_channel: mpsc::Receiver<SourceItem>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
    tasks: JoinSet<Result<(), StageError>>,
}

impl Queue {
    fn start(path: &Path, max_bytes: u64, capacity: usize) -> Self {
        let cfg = AlertQueueConfig {
            path: path.to_owned(),
            max_bytes,
        };
        let (to_batch, alert_channel) = mpsc::channel(capacity);
        let telemetry = Arc::new(Telemetry::default());
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let intake = overflow::start(&cfg, &telemetry, &cancel, &to_batch, &mut tasks)
            .expect("queue starts");
        Self {
            intake,
            alert_channel,
            telemetry,
            cancel,
            tasks,
        }
    }

    fn taken(&self) -> u64 {
        self.telemetry.alerts.load(Ordering::Relaxed)
    }

    fn dropped(&self) -> u64 {
        self.telemetry.alerts_dropped.load(Ordering::Relaxed)
    }

    /// Wait (bounded) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        tokio::time::timeout(PATIENCE, async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    /// The next `n` alerts out of the queue.
    async fn receive(&mut self, n: usize) -> Vec<Alert> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let item = tokio::time::timeout(PATIENCE, self.alert_channel.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out after {} alerts", got.len()))
                .expect("alert channel open");
            match item {
                SourceItem::Record(Lane::Alert, Record::Alert(a)) => got.push(*a),
                other => panic!("not an alert: {other:?}"),
            }
        }
        got
    }

    /// Stop like a shutdown: the drainer stops, the writer commits what
    /// it holds, and the file is closed.
    async fn stop(mut self) -> mpsc::Receiver<SourceItem> {
        self.cancel.cancel();
        drop(self.intake);
        tokio::time::timeout(PATIENCE, async {
            while let Some(r) = self.tasks.join_next().await {
                r.expect("no panic").expect("queue task ends cleanly");
            }
        })
        .await
        .expect("queue tasks end");
        self.alert_channel
    }
}

fn alerts(range: std::ops::Range<usize>) -> Vec<Alert> {
    range.map(alert).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backed_up_lane_spills_to_disk_and_delivers_everything_in_order() {
    const FIRST: usize = 2000;
    const MORE: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state/alert-queue.redb");
    let mut q = Queue::start(&path, 64 << 20, 4);
    assert!(
        !path.exists(),
        "the file is created on the first spill only"
    );

    // Nobody reads the alert channel: all but the first four spill.
    for i in 0..FIRST {
        q.intake.offer(alert(i)).expect("offer");
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    q.until("every alert stored", |q| q.taken() == FIRST as u64)
        .await;
    assert!(path.exists(), "alerts were spilled to the queue file");
    assert_eq!(q.intake.waiting(), (FIRST - 4) as u64);

    // The lane drains while new alerts keep coming: they queue behind.
    let intake = q.intake.clone();
    let reader = tokio::spawn(async move {
        let got = q.receive(FIRST + MORE).await;
        (q, got)
    });
    for i in FIRST..FIRST + MORE {
        intake.offer(alert(i)).expect("offer");
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(intake);
    let (q, got) = reader.await.expect("reader");
    assert!(got == alerts(0..FIRST + MORE), "delivered out of order");
    assert_eq!(q.dropped(), 0);
    assert_eq!(q.taken(), (FIRST + MORE) as u64);
    q.until("the overflow path empty", |q| q.intake.waiting() == 0)
        .await;
    let mut rx = q.stop().await;
    assert!(rx.try_recv().is_err(), "nothing more was delivered");
}

/// Bytes one test alert costs in the queue: its frame plus the key.
fn queued_cost(a: &Alert) -> u64 {
    let mut b = BatchBuilder::default();
    b.push(&Record::Alert(Box::new(a.clone()))).expect("push");
    let mut frame = Vec::new();
    b.finish(None, &mut frame).expect("finish");
    frame.len() as u64 + 8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_excess_and_counts_it() {
    // Alerts 100..150 all encode to the same size.
    const N: usize = 50;
    const FITS: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alert-queue.redb");
    let cost = queued_cost(&alert(100));
    let mut q = Queue::start(&path, cost * FITS as u64 + cost / 2, 1);

    // One alert fills the channel, five fit the queue, the rest are dropped.
    for i in 100..100 + N {
        q.intake.offer(alert(i)).expect("offer");
    }
    q.until("every alert stored or dropped", |q| {
        q.taken() + q.dropped() == N as u64
    })
    .await;
    assert_eq!(q.taken(), 1 + FITS as u64);
    assert_eq!(q.dropped(), (N - 1 - FITS) as u64);

    // The oldest arrive; the dropped ones are the newest.
    let got = q.receive(1 + FITS).await;
    assert!(got == alerts(100..101 + FITS), "delivered out of order");
    q.until("the overflow path empty", |q| q.intake.waiting() == 0)
        .await;
    // With room again, new alerts are taken.
    q.intake.offer(alert(200)).expect("offer");
    assert!(q.receive(1).await == alerts(200..201));
    assert_eq!(q.dropped(), (N - 1 - FITS) as u64);
    q.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_spill_channel_drops_at_once_and_counts() {
    // On one thread the writer cannot run while the alerts pour in: one
    // fills the channel, SPILL_CAPACITY wait for the writer, the rest drop.
    const EXTRA: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Queue::start(&dir.path().join("q.redb"), 64 << 20, 1);
    for i in 0..1 + SPILL_CAPACITY + EXTRA {
        q.intake.offer(alert(i)).expect("offer");
    }
    assert_eq!(q.dropped(), EXTRA as u64);
    let got = q.receive(1 + SPILL_CAPACITY).await;
    assert!(
        got == alerts(0..1 + SPILL_CAPACITY),
        "delivered out of order"
    );
    assert_eq!(q.taken(), (1 + SPILL_CAPACITY) as u64);
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_alerts_survive_a_restart_and_go_first() {
    const N: usize = 300;
    const LATER: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alert-queue.redb");

    // First run: alert 0 takes the only channel slot, 1..N wait on disk;
    // then the sender stops (its channel, and alert 0 with it, is gone).
    let q = Queue::start(&path, 64 << 20, 1);
    for i in 0..N {
        q.intake.offer(alert(i)).expect("offer");
    }
    q.until("every alert stored", |q| q.taken() == N as u64)
        .await;
    let first_channel = q.stop().await;
    drop(first_channel);

    // Second run on the same file: the left-over alerts go first, new ones
    // queue behind them.
    let mut q = Queue::start(&path, 64 << 20, 4);
    // (Its drainer may already have filled the four channel slots.)
    assert!(q.intake.waiting() >= (N - 1 - 4) as u64);
    for i in N..N + LATER {
        q.intake.offer(alert(i)).expect("offer");
    }
    let got = q.receive(N - 1 + LATER).await;
    assert!(got == alerts(1..N + LATER), "delivered out of order");
    assert_eq!(q.dropped(), 0);
    q.until("the overflow path empty", |q| q.intake.waiting() == 0)
        .await;
    q.stop().await;

    // Everything was handed over and deleted: a third run finds nothing.
    let q = Queue::start(&path, 64 << 20, 4);
    assert_eq!(q.intake.waiting(), 0);
    q.stop().await;
}
