//! Where bulk work runs, so an alert never waits behind it.
//!
//! - [`bulk`]: a runtime of its own for the sender's bulk lane (parsing,
//!   compression, sealing, encoding), so the runtime threads that carry
//!   alerts are never busy with a backlog. Its threads keep the process's
//!   priority: lowered too, they cut the sender's goodput beside a CPU hog
//!   from 552 to 207 Mbit/s (docs/PERFORMANCE.md) and bought the alerts
//!   nothing measurable.
//! - [`lower_this_thread`]: the receiver's bulk validate thread (turning a
//!   point backlog into JSON) runs [`BULK_NICE`] steps below the process,
//!   so on contended cores the alert path gets a core first.

use std::sync::OnceLock;

/// How much lower (in nice steps) bulk threads run than the process.
pub const BULK_NICE: i32 = 10;

/// Lower the calling thread's CPU priority by [`BULK_NICE`] (at most to
/// 19). Best effort: where the kernel refuses, the thread keeps its
/// priority, and the alert path its share only.
pub fn lower_this_thread() {
    let tid = Some(rustix::thread::gettid());
    if let Ok(nice) = rustix::process::getpriority_process(tid) {
        let _ = rustix::process::setpriority_process(tid, (nice + BULK_NICE).min(19));
    }
}

/// The runtime bulk work is spawned on (`Handle::spawn`,
/// `JoinSet::spawn_on`): as many workers as cores, apart from the
/// process's main runtime. Made on first use, and lives as long as the
/// process.
///
/// # Errors
/// When the runtime's threads cannot be started.
pub fn bulk() -> std::io::Result<tokio::runtime::Handle> {
    static BULK: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = BULK.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, usize::from))
            .thread_name("weir-bulk")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match rt {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(std::io::Error::other(format!(
            "starting the bulk work threads: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
    }

    #[test]
    fn a_lowered_thread_runs_below_the_process_and_bulk_threads_apart() {
        let mine = nice_of_this_thread();
        let lowered = std::thread::spawn(|| {
            lower_this_thread();
            nice_of_this_thread()
        })
        .join()
        .expect("join");
        assert_eq!(lowered, (mine + BULK_NICE).min(19));
        assert_eq!(
            nice_of_this_thread(),
            mine,
            "the caller's thread is untouched"
        );
        let handle = bulk().expect("bulk runtime");
        let name = std::thread::spawn(move || {
            handle.block_on(async {
                tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                    .await
                    .expect("worker")
            })
        })
        .join()
        .expect("join");
        assert_eq!(
            name.as_deref(),
            Some("weir-bulk"),
            "bulk tasks run on its own threads"
        );
    }
}
