//! Stage 3's workers, `solve`: RaptorQ rebuilds off the decode task.
//!
//! ```text
//!  decode ──Solve──> waiting (alerts first) ──> `limits.solve_workers` threads ──Solved──> decode
//! ```
//!
//! A block that lost a source symbol on the wire needs RaptorQ, the
//! receiver's heaviest work per byte (several ms per MB). Blocks are
//! independent, so up to `limits.solve_workers` solves run at once on the
//! blocking pool while the decode task goes on taking symbols of other
//! blocks and handing clean blocks through. Handing a block to another
//! thread costs CPU (its symbols are read on another core): on two cores
//! shared with the rest of the pipeline it bought no goodput and cost
//! about a tenth more CPU per MB (docs/PERFORMANCE.md), so by default a
//! host of one or two cores solves on the decode task. The block stays
//! pending in the reassembler while it is out ("being solved", see
//! [`weir_shared::reassembly::Reassembler::take_symbol`]).
//!
//! Bounded: with as many solves waiting as there are workers, the decode
//! task stops taking batches ([`Solver::is_full`]), and the receive budget
//! behind it pushes back on the socket as an inline solve did.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::task::JoinSet;
use weir_shared::lane::Lane;
use weir_shared::reassembly::{Solve, Solved};

use super::StageError;
use crate::stats::{RxStats, charge_cpu, thread_cpu};

/// Solves running and waiting.
pub struct Solver {
    workers: usize,
    running: JoinSet<Solved>,
    waiting: VecDeque<Solve>,
    stats: Arc<RxStats>,
}

impl Solver {
    /// `workers` solves at once (`limits.solve_workers`; 0: none, the
    /// decode task solves itself, [`Solver::is_inline`]); their CPU time is
    /// charged to the link stages.
    pub fn new(workers: usize, stats: Arc<RxStats>) -> Self {
        Self {
            workers,
            running: JoinSet::new(),
            waiting: VecDeque::new(),
            stats,
        }
    }

    /// No workers: the decode task solves each block itself.
    pub fn is_inline(&self) -> bool {
        self.workers == 0
    }

    /// Solve this block when a worker is free; an alert block goes ahead
    /// of every bulk block waiting.
    pub fn submit(&mut self, job: Solve) {
        if job.key().lane == Lane::Alert {
            self.waiting.push_front(job);
        } else {
            self.waiting.push_back(job);
        }
        self.start();
    }

    /// No solve running (none waiting either: one waits only while every
    /// worker is busy).
    pub fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    /// As many waiting as there are workers: take no more input until a
    /// solve is back.
    pub fn is_full(&self) -> bool {
        !self.is_inline() && self.waiting.len() >= self.workers
    }

    /// The next solve to finish, whichever block it is. Pending forever
    /// while idle: poll it only when [`Solver::is_idle`] is false.
    pub async fn next(&mut self) -> Result<Solved, StageError> {
        let Some(done) = self.running.join_next().await else {
            return std::future::pending().await;
        };
        self.start();
        done.map_err(|_| StageError::Closed("solve worker"))
    }

    fn start(&mut self) {
        while self.running.len() < self.workers {
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            let stats = self.stats.clone();
            self.running.spawn_blocking(move || {
                let cpu = thread_cpu();
                let done = job.run();
                charge_cpu(&stats.link_cpu_ns, cpu);
                done
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use weir_shared::fec::{BlockEncoder, repair_symbols, source_symbols};
    use weir_shared::reassembly::{Ready, Reassembler, ReassemblyLimits};
    use weir_shared::wire::{Header, KeyId, Kind, SessionId};

    use super::*;

    const SYM: u16 = 64;

    /// The symbols of block `seq` of `lane` with its first source symbol
    /// lost: the block needs a solve.
    fn lossy_block(lane: Lane, seq: u64) -> Vec<(Header, Vec<u8>)> {
        let block: Vec<u8> = (0..4000u32).map(|i| (i * 7 + seq as u32) as u8).collect();
        let mut enc = BlockEncoder::new(SYM, 1 << 20).expect("encoder");
        let k = source_symbols(4000, SYM);
        let mut out = Vec::new();
        enc.encode(&block, repair_symbols(k, 250, 4), |pid, s| {
            let header = Header {
                kind: Kind::Symbol,
                key_id: KeyId(1),
                lane,
                session: SessionId([5; 16]),
                seq,
                transfer_len: 4000,
                symbol_size: SYM,
                payload_id: pid,
            };
            out.push((header, s.to_vec()));
        })
        .expect("encode");
        out.remove(0);
        out
    }

    /// Feed symbols until the block asks for a solve.
    fn solve_of(r: &mut Reassembler, datagrams: &[(Header, Vec<u8>)]) -> Solve {
        let t = Instant::now();
        for (h, s) in datagrams {
            if let Ok(Some(Ready::Solve(job))) = r.take_symbol(t, h, s) {
                return job;
            }
        }
        panic!("no solve asked for");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn solves_run_off_the_task_alerts_first_and_every_block_comes_back() {
        let mut r = Reassembler::new(ReassemblyLimits {
            max_block_bytes: 1 << 20,
            max_pending_blocks: 64,
            block_timeout: Duration::from_secs(5),
            gap_timeout: Duration::from_secs(5),
            window_blocks: 1024,
            max_sessions: 4,
        });
        let inline = Solver::new(0, Arc::new(RxStats::default()));
        assert!(inline.is_inline() && inline.is_idle() && !inline.is_full());
        let mut solver = Solver::new(1, Arc::new(RxStats::default()));
        assert!(solver.is_idle());
        // Bulk blocks 0..3 first: one runs, two wait; the alert then goes
        // ahead of those two.
        for seq in 0..3 {
            solver.submit(solve_of(&mut r, &lossy_block(Lane::Bulk, seq)));
        }
        assert!(!solver.is_idle());
        assert!(solver.is_full(), "two waiting for one worker");
        solver.submit(solve_of(&mut r, &lossy_block(Lane::Alert, 0)));
        assert_eq!(
            solver.waiting.front().map(|j| j.key().lane),
            Some(Lane::Alert)
        );
        let mut back = Vec::new();
        while !solver.is_idle() {
            let done = solver.next().await.expect("solved");
            match r.solved(done) {
                Some(Ready::Block(b)) => back.push((b.header.lane, b.header.seq, b.repaired)),
                Some(Ready::Solve(job)) => solver.submit(job),
                None => {}
            }
        }
        assert_eq!(
            back,
            vec![
                (Lane::Bulk, 0, 1),
                (Lane::Alert, 0, 1),
                (Lane::Bulk, 1, 1),
                (Lane::Bulk, 2, 1)
            ]
        );
        assert_eq!(r.pending_len(), 0, "no block left pending");
    }
}
