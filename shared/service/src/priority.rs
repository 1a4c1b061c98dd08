//! CPU priority of bulk work.
//!
//! An alert must not wait for a core while the bulk lane parses,
//! compresses, encodes or solves a backlog. Bulk work runs on threads
//! whose nice value is [`BULK_NICE`] above the process's own: when the
//! host's cores are contended, the scheduler gives the alert path (on the
//! process's other threads) about ten times their share; when they are
//! not, bulk work still has every core.

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
/// `JoinSet::spawn_on`): as many workers as cores, each at the lower
/// priority, and so is each of its blocking threads. Made on first use,
/// and lives as long as the process.
///
/// # Errors
/// When the runtime's threads cannot be started.
pub fn bulk() -> std::io::Result<tokio::runtime::Handle> {
    static BULK: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = BULK.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, usize::from))
            .thread_name("weir-bulk")
            .on_thread_start(lower_this_thread)
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
    fn bulk_threads_run_below_the_process() {
        let mine = nice_of_this_thread();
        let handle = bulk().expect("bulk runtime");
        let (worker, blocking) = std::thread::spawn(move || {
            handle.block_on(async {
                let worker = tokio::spawn(async { nice_of_this_thread() })
                    .await
                    .expect("worker");
                let blocking = tokio::task::spawn_blocking(nice_of_this_thread)
                    .await
                    .expect("blocking");
                (worker, blocking)
            })
        })
        .join()
        .expect("join");
        let want = (mine + BULK_NICE).min(19);
        assert_eq!((worker, blocking), (want, want));
        assert_eq!(
            nice_of_this_thread(),
            mine,
            "the caller's thread is untouched"
        );
    }
}
