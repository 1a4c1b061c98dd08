//! Opaque files on the receiver: which bytes of each file have arrived,
//! when a file is complete, and when it never will be.
//!
//! A file crosses as [`FileChunk`] records spread over many blocks of one
//! lane. The receiver cannot ask for a chunk again, so it must decide on
//! its own when a file is whole (every byte of its declared size arrived)
//! and when it is *incomplete*: the sender is done with it but bytes are
//! missing. Two signals say so:
//!
//! * **Lost blocks.** The reassembler declares blocks lost
//!   ([`LostRange`]) strictly in sequence order, once everything before
//!   them is resolved. A sender emits a file's chunks in order on one lane,
//!   so the bytes of a gap between two received chunks travelled in blocks
//!   between those chunks' blocks (a missing head: at or before the first
//!   received chunk's block; a missing tail: at or after the last one's).
//!   When a lost block falls in such an interval and the file has made no
//!   progress for `loss_settle` (the reassembler's gap timeout: by then any
//!   other block of the interval was delivered or declared lost too), the
//!   file is reported incomplete. A missing *tail* needs one more fact:
//!   that blocks after the lost ones have reached us
//!   ([`FileAssembler::handle_block`] is told of every block), so a file
//!   whose next chunks still wait in a queue upstream (a broker backlog
//!   holds the outbox back) is not given up early.
//! * **No progress** for `incomplete_timeout`: the backstop for losses no
//!   gap event names (a sender that died mid-file, a receiver restarted
//!   mid-file).
//!
//! The metadata is untrusted input even after the AEAD (a buggy or
//! compromised sender): names are checked to be one plain file name
//! ([`check_name`]), byte ranges to lie within the declared size, every
//! chunk of a file must repeat the same metadata, and the files in progress
//! are bounded in number and in total declared bytes. Sans-IO: the caller
//! passes `now` and does the writing; this module only decides.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::MAX_FILE_NAME_BYTES;
use crate::lane::Lane;
use crate::reassembly::LostRange;
use crate::record::FileChunk;
use crate::wire::SessionId;

/// Missing byte ranges listed in an [`Incomplete`] report at most (the
/// total is always given).
pub const MAX_REPORTED_RANGES: usize = 16;

/// Lost block ranges remembered (oldest forgotten first).
const LOST_MEMORY: usize = 1024;

/// Sender lanes whose highest block is remembered (sessions × lanes).
const SEEN_MEMORY: usize = 256;

/// Finished, refused or abandoned files remembered, so their late or
/// repeated chunks are recognised instead of starting the file again.
const FINISHED_MEMORY: usize = 4096;

/// Identity of one file transfer: file ids are unique within a sender
/// session only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Sender session.
    pub session: SessionId,
    /// The sender's file id.
    pub file_id: u64,
}

/// Bounds on the files being assembled; from the validated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesLimits {
    /// Most files in progress at once.
    pub max_files: usize,
    /// Most declared bytes of all files in progress together (what the
    /// staging directory may hold).
    pub max_total_bytes: u64,
    /// A file without a new byte for this long is incomplete.
    pub incomplete_timeout: Duration,
    /// A file with a lost block where its missing bytes travelled is
    /// incomplete after this long without a new byte.
    pub loss_settle: Duration,
}

/// Why a file name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The name is longer than [`MAX_FILE_NAME_BYTES`].
    #[error("{0} bytes long, above {MAX_FILE_NAME_BYTES}")]
    TooLong(usize),
    /// `.` or `..`.
    #[error("a directory reference (`.` or `..`)")]
    DotName,
    /// An absolute path (`/x`, `\x`, `C:x`).
    #[error("an absolute path")]
    Absolute,
    /// Contains `/` or `\`.
    #[error("contains a path separator")]
    Separator,
    /// Contains a NUL byte.
    #[error("contains NUL")]
    Nul,
    /// Contains a control character.
    #[error("contains a control character")]
    Control,
    /// Starts with `.`: hidden, and the prefix of the staging directory.
    #[error("starts with '.' (hidden names are reserved)")]
    Hidden,
}

/// Check that `name` is one plain file name that stays inside the output
/// directory on every platform a receiver might run on.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_FILE_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName);
    }
    let b = name.as_bytes();
    let drive = b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':';
    if name.starts_with(['/', '\\']) || drive {
        return Err(NameError::Absolute);
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Separator);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.starts_with('.') {
        return Err(NameError::Hidden);
    }
    Ok(())
}

/// Why a chunk (or its whole file) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The file name is not a plain file name; the file is refused whole.
    #[error("file name refused: {0}")]
    Name(NameError),
    /// The chunk's bytes lie outside the declared size.
    #[error("chunk at offset {offset} of {len} bytes beyond the declared size {size}")]
    OutOfRange {
        /// Chunk offset.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Declared file size.
        size: u64,
    },
    /// Chunk index not below the declared chunk count.
    #[error("chunk index {index} of {chunks} chunks")]
    Index {
        /// Chunk index.
        index: u32,
        /// Declared chunks.
        chunks: u32,
    },
    /// The chunk's metadata differs from earlier chunks of the same file.
    #[error("chunk metadata `{field}` differs from earlier chunks of the file")]
    Conflict {
        /// The field that differs.
        field: &'static str,
    },
    /// Too many files in progress; the file is refused whole.
    #[error("{limit} files already in progress")]
    TooManyFiles {
        /// The configured limit.
        limit: usize,
    },
    /// The file does not fit the staging budget; it is refused whole.
    #[error("file of {size} bytes does not fit: {room} bytes of the staging budget left")]
    TooLarge {
        /// Declared size.
        size: u64,
        /// Room left under `max_total_bytes`.
        room: u64,
    },
}

/// What to do with an accepted chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The chunk brings new bytes: write it at its offset.
    Accepted {
        /// First chunk of the file: create its staging file.
        new_file: bool,
        /// Bytes not seen before.
        new_bytes: u64,
        /// Every byte of the file has now arrived: the file is no longer
        /// tracked, finish it (verify, move into place).
        complete: bool,
    },
    /// Every byte of the chunk had arrived already: nothing to write.
    Duplicate,
    /// The file was already completed, reported incomplete, refused or
    /// abandoned: ignore the chunk.
    Finished,
}

/// Why a file was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompleteCause {
    /// Blocks were declared lost where the missing bytes travelled.
    BlocksLost {
        /// Lane of the file.
        lane: Lane,
        /// First lost block of the range that matched.
        first: u64,
        /// Last lost block of that range.
        last: u64,
    },
    /// Nothing arrived for this long.
    NoProgress {
        /// Time since the last new byte.
        idle: Duration,
    },
}

/// A file that will never complete, and what it misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    /// The transfer.
    pub key: FileKey,
    /// Its (checked) name.
    pub name: String,
    /// Declared size.
    pub size: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Bytes missing.
    pub missing_bytes: u64,
    /// The first [`MAX_REPORTED_RANGES`] missing byte ranges, `start..end`.
    pub missing: Vec<(u64, u64)>,
    /// How many missing ranges there are in all.
    pub missing_ranges: usize,
    /// Why it was given up.
    pub cause: IncompleteCause,
}

/// A received byte range and the blocks its chunks came in.
#[derive(Debug, Clone, Copy)]
struct Span {
    end: u64,
    min_block: u64,
    max_block: u64,
}

/// A file being assembled.
#[derive(Debug)]
struct Assembly {
    name: String,
    size: u64,
    mtime_ns: i64,
    sha256: [u8; 32],
    chunks: u32,
    lane: Lane,
    /// Received ranges by start offset; disjoint and never adjacent.
    have: BTreeMap<u64, Span>,
    received: u64,
    last_progress: Instant,
}

impl Assembly {
    fn check_same(&self, c: &FileChunk, lane: Lane) -> Result<(), FileError> {
        let field = if c.name != self.name {
            "name"
        } else if c.size != self.size {
            "size"
        } else if c.mtime_ns != self.mtime_ns {
            "mtime_ns"
        } else if c.sha256 != self.sha256 {
            "sha256"
        } else if c.chunks != self.chunks {
            "chunks"
        } else if lane != self.lane {
            "lane"
        } else {
            return Ok(());
        };
        Err(FileError::Conflict { field })
    }

    /// Record `start..end`, which came in block `block`; returns the bytes
    /// that were new.
    fn insert(&mut self, start: u64, end: u64, block: u64) -> u64 {
        if start == end {
            return 0;
        }
        let mut merged = Span {
            end,
            min_block: block,
            max_block: block,
        };
        let mut merged_start = start;
        let mut covered = 0;
        // Spans touching or overlapping `start..end` start at or before
        // `end` and end at or after `start`; spans are disjoint, so they are
        // the last ones starting at or before `end`, walking backwards.
        let touching: Vec<u64> = self
            .have
            .range(..=end)
            .rev()
            .take_while(|(_, s)| s.end >= start)
            .map(|(k, _)| *k)
            .collect();
        for k in touching {
            if let Some(s) = self.have.remove(&k) {
                covered += s.end - k;
                merged_start = merged_start.min(k);
                merged.end = merged.end.max(s.end);
                merged.min_block = merged.min_block.min(s.min_block);
                merged.max_block = merged.max_block.max(s.max_block);
            }
        }
        let new = (merged.end - merged_start) - covered;
        self.have.insert(merged_start, merged);
        self.received += new;
        new
    }

    /// Missing byte ranges, each with the interval of blocks its bytes
    /// travelled in (assuming chunks are sent in order on one lane).
    fn gaps(&self) -> impl Iterator<Item = (u64, u64, u64, u64)> + '_ {
        let mut prev_end = 0;
        let mut prev_block = 0;
        let inner = self.have.iter().filter_map(move |(&start, s)| {
            let gap = (start > prev_end).then_some((prev_end, start, prev_block, s.min_block));
            prev_end = s.end;
            prev_block = s.max_block;
            gap
        });
        // The tail: after the last span, up to the declared size.
        let (tail_start, tail_block) = self
            .have
            .iter()
            .next_back()
            .map_or((0, 0), |(_, s)| (s.end, s.max_block));
        inner.chain((tail_start < self.size).then_some((
            tail_start,
            self.size,
            tail_block,
            u64::MAX,
        )))
    }

    fn report(&self, key: FileKey, cause: IncompleteCause) -> Incomplete {
        let mut missing = Vec::new();
        let mut missing_ranges = 0;
        for (start, end, _, _) in self.gaps() {
            if missing.len() < MAX_REPORTED_RANGES {
                missing.push((start, end));
            }
            missing_ranges += 1;
        }
        Incomplete {
            key,
            name: self.name.clone(),
            size: self.size,
            received_bytes: self.received,
            missing_bytes: self.size - self.received,
            missing,
            missing_ranges,
            cause,
        }
    }
}

/// The receiver's file assembly core. Sans-IO: the caller passes `now`,
/// writes the bytes and finishes the files.
#[derive(Debug)]
pub struct FileAssembler {
    limits: FilesLimits,
    files: HashMap<FileKey, Assembly>,
    /// Declared bytes of the files in `files`.
    declared: u64,
    finished: HashSet<FileKey>,
    finished_order: VecDeque<FileKey>,
    lost: VecDeque<LostRange>,
    /// Highest block seen per sender lane.
    seen: HashMap<(SessionId, Lane), u64>,
    incomplete: VecDeque<Incomplete>,
}

impl FileAssembler {
    /// An assembler bounded by `limits`.
    pub fn new(limits: FilesLimits) -> Self {
        Self {
            limits,
            files: HashMap::new(),
            declared: 0,
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            lost: VecDeque::new(),
            seen: HashMap::new(),
            incomplete: VecDeque::new(),
        }
    }

    /// Files in progress.
    pub fn in_progress(&self) -> usize {
        self.files.len()
    }

    /// Whether `key` is in progress or was recently finished, refused or
    /// abandoned (its chunks are then not the start of a new file).
    pub fn knows(&self, key: FileKey) -> bool {
        self.files.contains_key(&key) || self.finished.contains(&key)
    }

    /// Declared bytes of the files in progress.
    pub fn declared_bytes(&self) -> u64 {
        self.declared
    }

    /// Block `block` of `lane` of `session` reached this stage (with or
    /// without file chunks): what came before it is no longer in transit.
    pub fn handle_block(&mut self, session: SessionId, lane: Lane, block: u64) {
        if self.seen.len() >= SEEN_MEMORY && !self.seen.contains_key(&(session, lane)) {
            // Far more sender lanes than sessions are tracked anywhere else:
            // forget them all rather than keep an order.
            self.seen.clear();
        }
        let high = self.seen.entry((session, lane)).or_insert(block);
        *high = (*high).max(block);
    }

    /// One chunk of a file, which arrived in block `block` of `lane` of
    /// `session` (which counts as [`Self::handle_block`] for that block).
    pub fn handle_chunk(
        &mut self,
        now: Instant,
        session: SessionId,
        lane: Lane,
        block: u64,
        c: &FileChunk,
    ) -> Result<ChunkOutcome, FileError> {
        let key = FileKey {
            session,
            file_id: c.file_id,
        };
        self.handle_block(session, lane, block);
        if self.finished.contains(&key) {
            return Ok(ChunkOutcome::Finished);
        }
        if c.index >= c.chunks {
            return Err(FileError::Index {
                index: c.index,
                chunks: c.chunks,
            });
        }
        let len = c.data.len() as u64;
        let end =
            c.offset
                .checked_add(len)
                .filter(|&e| e <= c.size)
                .ok_or(FileError::OutOfRange {
                    offset: c.offset,
                    len,
                    size: c.size,
                })?;
        let new_file = !self.files.contains_key(&key);
        if new_file {
            self.start(key, lane, now, c)?;
        }
        let Some(file) = self.files.get_mut(&key) else {
            return Ok(ChunkOutcome::Finished);
        };
        file.check_same(c, lane)?;
        let new_bytes = file.insert(c.offset, end, block);
        let complete = file.received == file.size;
        if new_bytes == 0 && !complete && !new_file {
            return Ok(ChunkOutcome::Duplicate);
        }
        file.last_progress = now;
        if complete {
            self.close(key);
        }
        Ok(ChunkOutcome::Accepted {
            new_file,
            new_bytes,
            complete,
        })
    }

    /// Check a new file's name and limits and start tracking it; a refused
    /// file is remembered so its other chunks are ignored.
    fn start(
        &mut self,
        key: FileKey,
        lane: Lane,
        now: Instant,
        c: &FileChunk,
    ) -> Result<(), FileError> {
        let refused = if let Err(e) = check_name(&c.name) {
            Some(FileError::Name(e))
        } else if self.files.len() >= self.limits.max_files {
            Some(FileError::TooManyFiles {
                limit: self.limits.max_files,
            })
        } else {
            let room = self.limits.max_total_bytes.saturating_sub(self.declared);
            (c.size > room).then_some(FileError::TooLarge { size: c.size, room })
        };
        if let Some(e) = refused {
            self.remember(key);
            return Err(e);
        }
        self.declared += c.size;
        self.files.insert(
            key,
            Assembly {
                name: c.name.clone(),
                size: c.size,
                mtime_ns: c.mtime_ns,
                sha256: c.sha256,
                chunks: c.chunks,
                lane,
                have: BTreeMap::new(),
                received: 0,
                last_progress: now,
            },
        );
        Ok(())
    }

    /// Blocks declared lost by the reassembler.
    pub fn handle_lost(&mut self, lost: LostRange) {
        if let Some(last) = self.lost.back_mut()
            && last.session == lost.session
            && last.lane == lost.lane
            && last.last.checked_add(1) == Some(lost.first)
        {
            last.last = lost.last;
            return;
        }
        if self.lost.len() >= LOST_MEMORY {
            self.lost.pop_front();
        }
        self.lost.push_back(lost);
    }

    /// Give up files that will not complete; read them with
    /// [`Self::poll_incomplete`]. Call periodically.
    pub fn poll_timeouts(&mut self, now: Instant) {
        let mut given_up = Vec::new();
        for (key, f) in &self.files {
            let idle = now.saturating_duration_since(f.last_progress);
            if idle >= self.limits.incomplete_timeout {
                given_up.push((*key, IncompleteCause::NoProgress { idle }));
            } else if idle >= self.limits.loss_settle
                && let Some(cause) = self.lost_in_gap(key.session, f)
            {
                given_up.push((*key, cause));
            }
        }
        // Report in file-id order: deterministic, and the order files were sent.
        given_up.sort_by_key(|(k, _)| k.file_id);
        for (key, cause) in given_up {
            if let Some(f) = self.files.get(&key) {
                let report = f.report(key, cause);
                self.incomplete.push_back(report);
                self.close(key);
            }
        }
    }

    /// A lost block range where some of `f`'s missing bytes travelled.
    /// For the tail (no received chunk after the gap), blocks after the
    /// lost ones must have arrived: until then the rest may be in transit.
    fn lost_in_gap(&self, session: SessionId, f: &Assembly) -> Option<IncompleteCause> {
        let seen = self.seen.get(&(session, f.lane)).copied();
        let mut lost = self
            .lost
            .iter()
            .filter(|l| l.session == session && l.lane == f.lane);
        lost.find(|l| {
            f.gaps().any(|(_, _, lo, hi)| {
                let settled = hi != u64::MAX || seen.is_some_and(|s| s > l.last);
                l.first <= hi && l.last >= lo && settled
            })
        })
        .map(|l| IncompleteCause::BlocksLost {
            lane: l.lane,
            first: l.first,
            last: l.last,
        })
    }

    /// Next file given up, if any.
    pub fn poll_incomplete(&mut self) -> Option<Incomplete> {
        self.incomplete.pop_front()
    }

    /// Stop tracking a file the caller cannot continue (its staging file
    /// could not be written); its later chunks are ignored. Returns
    /// whether the file was in progress.
    pub fn abandon(&mut self, key: FileKey) -> bool {
        let was = self.files.contains_key(&key);
        self.close(key);
        was
    }

    fn close(&mut self, key: FileKey) {
        if let Some(f) = self.files.remove(&key) {
            self.declared -= f.size;
        }
        self.remember(key);
    }

    fn remember(&mut self, key: FileKey) {
        if self.finished.insert(key) {
            if self.finished_order.len() >= FINISHED_MEMORY
                && let Some(old) = self.finished_order.pop_front()
            {
                self.finished.remove(&old);
            }
            self.finished_order.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SessionId = SessionId([7; 16]);
    const CHUNK: u64 = 100;

    fn limits() -> FilesLimits {
        FilesLimits {
            max_files: 4,
            max_total_bytes: 10_000,
            incomplete_timeout: Duration::from_mins(1),
            loss_settle: Duration::from_secs(5),
        }
    }

    /// Chunk `index` of file `id`: `size` bytes in chunks of [`CHUNK`].
    fn chunk(id: u64, name: &str, size: u64, index: u32) -> FileChunk {
        let offset = u64::from(index) * CHUNK;
        let len = size.saturating_sub(offset).min(CHUNK);
        FileChunk {
            seq: u64::from(index),
            file_id: id,
            name: name.into(),
            size,
            mtime_ns: 1_700_000_000_000_000_000,
            sha256: [9; 32],
            offset,
            index,
            chunks: size.div_ceil(CHUNK).max(1) as u32,
            data: vec![index as u8; len as usize],
        }
    }

    fn accepted(o: Result<ChunkOutcome, FileError>) -> (bool, u64, bool) {
        match o {
            Ok(ChunkOutcome::Accepted {
                new_file,
                new_bytes,
                complete,
            }) => (new_file, new_bytes, complete),
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    #[test]
    fn plain_names_pass_and_traversal_names_are_refused() {
        for ok in [
            "report.csv",
            "a",
            "a..b",
            "firmware v2 (final).bin",
            "Überdruck-Protokoll.pdf",
            "x.",
            &"n".repeat(MAX_FILE_NAME_BYTES),
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            ("", NameError::Empty),
            (".", NameError::DotName),
            ("..", NameError::DotName),
            ("/etc/passwd", NameError::Absolute),
            ("\\\\server\\share", NameError::Absolute),
            ("C:\\Windows\\x.dll", NameError::Absolute),
            ("c:boot.ini", NameError::Absolute),
            ("../../etc/cron.d/x", NameError::Separator),
            ("a/../../b", NameError::Separator),
            ("dir/file", NameError::Separator),
            ("..\\..\\x", NameError::Separator),
            ("a\\b", NameError::Separator),
            ("a\0b", NameError::Nul),
            ("line\nbreak", NameError::Control),
            ("esc\x1b[31m", NameError::Control),
            ("del\x7f", NameError::Control),
            ("c1\u{85}", NameError::Control),
            (".staging", NameError::Hidden),
            (".bashrc", NameError::Hidden),
            ("...", NameError::Hidden),
        ] {
            assert_eq!(check_name(bad), Err(why), "{bad:?}");
        }
        let long = "n".repeat(MAX_FILE_NAME_BYTES + 1);
        assert_eq!(
            check_name(&long),
            Err(NameError::TooLong(MAX_FILE_NAME_BYTES + 1))
        );
        // Multi-byte characters count in bytes.
        let wide = "é".repeat(MAX_FILE_NAME_BYTES / 2 + 1);
        assert!(matches!(check_name(&wide), Err(NameError::TooLong(_))));
    }

    #[test]
    fn a_refused_name_refuses_the_whole_file_once() {
        let mut a = FileAssembler::new(limits());
        let t = Instant::now();
        let c = chunk(1, "../evil", 250, 0);
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::Name(NameError::Separator))
        );
        assert_eq!(a.in_progress(), 0);
        // Its other chunks are ignored, not refused again and again.
        let c = chunk(1, "../evil", 250, 1);
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Ok(ChunkOutcome::Finished)
        );
    }

    #[test]
    fn chunks_in_any_order_with_duplicates_complete_once() {
        let mut a = FileAssembler::new(limits());
        let t = Instant::now();
        let size = 1_050;
        // 11 chunks; send them shuffled with duplicates.
        let order = [3u32, 0, 3, 10, 1, 2, 0, 4, 5, 9, 8, 7, 6];
        let mut completions = 0;
        let mut total_new = 0;
        for (i, &idx) in order.iter().enumerate() {
            match a.handle_chunk(t, S, Lane::Bulk, u64::from(idx), &chunk(1, "f", size, idx)) {
                Ok(ChunkOutcome::Accepted {
                    new_file,
                    new_bytes,
                    complete,
                }) => {
                    assert_eq!(new_file, i == 0);
                    total_new += new_bytes;
                    completions += u32::from(complete);
                    assert_eq!(complete, i == order.len() - 1);
                }
                Ok(ChunkOutcome::Duplicate) => assert!(idx == 3 || idx == 0),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(completions, 1);
        assert_eq!(total_new, size);
        assert_eq!(a.in_progress(), 0);
        assert_eq!(a.declared_bytes(), 0);
        // A chunk arriving again after completion (redelivery) is ignored.
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(1, "f", size, 5)),
            Ok(ChunkOutcome::Finished)
        );
    }

    #[test]
    fn overlapping_chunks_count_only_new_bytes() {
        let mut a = FileAssembler::new(limits());
        let t = Instant::now();
        let mut c = chunk(2, "f", 300, 0);
        c.data = vec![0; 150];
        assert_eq!(
            accepted(a.handle_chunk(t, S, Lane::Bulk, 0, &c)),
            (true, 150, false)
        );
        // 100..200 overlaps 100..150.
        let c = chunk(2, "f", 300, 1);
        assert_eq!(
            accepted(a.handle_chunk(t, S, Lane::Bulk, 1, &c)),
            (false, 50, false)
        );
        // 50..250 bridges into new ground on the right only.
        let mut c = chunk(2, "f", 300, 0);
        c.offset = 50;
        c.data = vec![0; 200];
        assert_eq!(
            accepted(a.handle_chunk(t, S, Lane::Bulk, 1, &c)),
            (false, 50, false)
        );
        // Entirely inside what arrived: a duplicate.
        let mut c = chunk(2, "f", 300, 0);
        c.offset = 10;
        c.data = vec![0; 20];
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 1, &c),
            Ok(ChunkOutcome::Duplicate)
        );
        // The last 50 bytes complete it.
        let c = chunk(2, "f", 300, 2);
        assert_eq!(
            accepted(a.handle_chunk(t, S, Lane::Bulk, 2, &c)),
            (false, 50, true)
        );
    }

    #[test]
    fn out_of_range_and_bad_index_chunks_are_refused() {
        let mut a = FileAssembler::new(limits());
        let t = Instant::now();
        let mut c = chunk(3, "f", 250, 2);
        c.data = vec![0; 51];
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::OutOfRange {
                offset: 200,
                len: 51,
                size: 250
            })
        );
        let mut c = chunk(3, "f", 250, 0);
        c.offset = u64::MAX - 10;
        assert!(matches!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::OutOfRange { .. })
        ));
        let mut c = chunk(3, "f", 250, 0);
        c.index = 3;
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::Index {
                index: 3,
                chunks: 3
            })
        );
        // None of that started the file; a good chunk does.
        assert_eq!(a.in_progress(), 0);
        assert!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(3, "f", 250, 0))
                .is_ok()
        );
        assert_eq!(a.in_progress(), 1);
    }

    #[test]
    fn conflicting_metadata_is_refused_per_field() {
        let mut a = FileAssembler::new(limits());
        let t = Instant::now();
        assert!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(4, "f", 500, 0))
                .is_ok()
        );
        let mut c = chunk(4, "g", 500, 1);
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::Conflict { field: "name" })
        );
        c = chunk(4, "f", 600, 1);
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::Conflict { field: "size" })
        );
        c = chunk(4, "f", 500, 1);
        c.sha256[0] ^= 1;
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::Conflict { field: "sha256" })
        );
        c = chunk(4, "f", 500, 1);
        c.mtime_ns += 1;
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &c),
            Err(FileError::Conflict { field: "mtime_ns" })
        );
        c = chunk(4, "f", 500, 1);
        assert_eq!(
            a.handle_chunk(t, S, Lane::Alert, 0, &c),
            Err(FileError::Conflict { field: "lane" })
        );
        // The same file id in another session is another file.
        let other = SessionId([8; 16]);
        assert_eq!(
            accepted(a.handle_chunk(t, other, Lane::Bulk, 0, &chunk(4, "g", 100, 0))),
            (true, 100, true)
        );
    }

    #[test]
    fn files_in_progress_are_bounded_in_count_and_bytes() {
        let mut a = FileAssembler::new(limits());
        let t = Instant::now();
        for id in 0..4 {
            assert!(
                a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(id, "f", 1_000, 0))
                    .is_ok()
            );
        }
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(9, "f", 1_000, 0)),
            Err(FileError::TooManyFiles { limit: 4 })
        );
        let mut a = FileAssembler::new(limits());
        assert!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(0, "f", 9_000, 0))
                .is_ok()
        );
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(1, "f", 1_001, 0)),
            Err(FileError::TooLarge {
                size: 1_001,
                room: 1_000
            })
        );
        assert_eq!(a.declared_bytes(), 9_000);
    }

    #[test]
    fn empty_file_completes_on_its_one_chunk() {
        let mut a = FileAssembler::new(limits());
        let c = chunk(5, "empty", 0, 0);
        assert_eq!(
            accepted(a.handle_chunk(Instant::now(), S, Lane::Bulk, 0, &c)),
            (true, 0, true)
        );
    }

    /// Feed chunks `0..n` of a 1000-byte file, chunk `i` in block `10 + i`,
    /// except those in `skip`.
    fn feed(a: &mut FileAssembler, t: Instant, id: u64, skip: &[u32]) {
        for i in (0..10).filter(|i| !skip.contains(i)) {
            let _ = a.handle_chunk(
                t,
                S,
                Lane::Bulk,
                10 + u64::from(i),
                &chunk(id, "f", 1_000, i),
            );
        }
    }

    #[test]
    fn lost_block_inside_a_gap_reports_the_file_incomplete_after_settling() {
        let mut a = FileAssembler::new(limits());
        let t0 = Instant::now();
        feed(&mut a, t0, 1, &[4, 5]);
        a.handle_lost(LostRange {
            session: S,
            lane: Lane::Bulk,
            first: 14,
            last: 15,
        });
        a.poll_timeouts(t0 + Duration::from_secs(1));
        assert_eq!(a.poll_incomplete(), None, "not settled yet");
        a.poll_timeouts(t0 + Duration::from_secs(5));
        let r = a.poll_incomplete().expect("incomplete");
        assert_eq!(r.name, "f");
        assert_eq!(r.missing, vec![(400, 600)]);
        assert_eq!(r.missing_ranges, 1);
        assert_eq!(r.missing_bytes, 200);
        assert_eq!(r.received_bytes, 800);
        assert_eq!(
            r.cause,
            IncompleteCause::BlocksLost {
                lane: Lane::Bulk,
                first: 14,
                last: 15
            }
        );
        assert_eq!(a.in_progress(), 0);
        assert_eq!(a.declared_bytes(), 0);
        assert_eq!(a.poll_incomplete(), None, "reported once");
        // A late chunk of it is ignored.
        assert_eq!(
            a.handle_chunk(t0, S, Lane::Bulk, 14, &chunk(1, "f", 1_000, 4)),
            Ok(ChunkOutcome::Finished)
        );
    }

    #[test]
    fn lost_tail_and_head_blocks_are_matched() {
        let t0 = Instant::now();
        let settled = t0 + Duration::from_secs(5);
        // Tail: chunks 8 and 9 missing, block 30 (after the last chunk's
        // block 17) lost.
        let mut a = FileAssembler::new(limits());
        feed(&mut a, t0, 1, &[8, 9]);
        a.handle_lost(LostRange {
            session: S,
            lane: Lane::Bulk,
            first: 30,
            last: 30,
        });
        a.poll_timeouts(settled);
        assert_eq!(
            a.poll_incomplete(),
            None,
            "blocks 18..=29 (and the rest of the file) may still be in transit"
        );
        a.handle_block(S, Lane::Bulk, 31);
        a.poll_timeouts(settled);
        let r = a.poll_incomplete().expect("tail loss");
        assert_eq!(r.missing, vec![(800, 1_000)]);
        // Head: chunk 0 missing, block 3 (before block 11) lost.
        let mut a = FileAssembler::new(limits());
        feed(&mut a, t0, 1, &[0]);
        a.handle_lost(LostRange {
            session: S,
            lane: Lane::Bulk,
            first: 3,
            last: 3,
        });
        a.poll_timeouts(settled);
        assert_eq!(
            a.poll_incomplete().expect("head loss").missing,
            vec![(0, 100)]
        );
    }

    #[test]
    fn lost_blocks_elsewhere_do_not_condemn_a_file() {
        let mut a = FileAssembler::new(limits());
        let t0 = Instant::now();
        // Chunks 4 and 5 missing: they travelled in blocks 13..=16.
        feed(&mut a, t0, 1, &[4, 5]);
        for (session, lane, first, last) in [
            (S, Lane::Bulk, 2, 12),                   // before the gap
            (S, Lane::Bulk, 17, 40),                  // after it
            (S, Lane::Alert, 14, 15),                 // another lane
            (SessionId([1; 16]), Lane::Bulk, 14, 15), // another session
        ] {
            a.handle_lost(LostRange {
                session,
                lane,
                first,
                last,
            });
        }
        a.poll_timeouts(t0 + Duration::from_secs(30));
        assert_eq!(a.poll_incomplete(), None);
        // The chunks were only late: the file completes.
        let (_, _, complete) = accepted(a.handle_chunk(
            t0 + Duration::from_secs(31),
            S,
            Lane::Bulk,
            14,
            &chunk(1, "f", 1_000, 4),
        ));
        assert!(!complete);
        let (_, _, complete) = accepted(a.handle_chunk(
            t0 + Duration::from_secs(31),
            S,
            Lane::Bulk,
            15,
            &chunk(1, "f", 1_000, 5),
        ));
        assert!(complete);
    }

    #[test]
    fn progress_defers_the_verdict_and_silence_ends_it() {
        let mut a = FileAssembler::new(limits());
        let t0 = Instant::now();
        // Chunks 0..5 arrive (blocks 10..=14), then block 20 is declared
        // lost while the file is still being sent: no verdict while bytes
        // keep coming.
        for i in 0..5 {
            let _ = a.handle_chunk(
                t0,
                S,
                Lane::Bulk,
                10 + u64::from(i),
                &chunk(1, "f", 1_000, i),
            );
        }
        a.handle_lost(LostRange {
            session: S,
            lane: Lane::Bulk,
            first: 20,
            last: 20,
        });
        let t1 = t0 + Duration::from_secs(4);
        for i in [5, 6] {
            let _ = a.handle_chunk(
                t1,
                S,
                Lane::Bulk,
                10 + u64::from(i),
                &chunk(1, "f", 1_000, i),
            );
        }
        a.poll_timeouts(t0 + Duration::from_secs(6));
        assert_eq!(a.poll_incomplete(), None, "progress 2 s ago");
        // The rest never comes: block 20 lies in the tail gap, and a
        // block after it has arrived.
        a.poll_timeouts(t1 + Duration::from_secs(5));
        assert_eq!(a.poll_incomplete(), None, "nothing after block 20 yet");
        a.handle_block(S, Lane::Bulk, 21);
        a.poll_timeouts(t1 + Duration::from_secs(5));
        let r = a.poll_incomplete().expect("incomplete");
        assert_eq!(r.missing, vec![(700, 1_000)]);
        assert_eq!(r.missing_bytes, 300);
        assert_eq!(
            r.cause,
            IncompleteCause::BlocksLost {
                lane: Lane::Bulk,
                first: 20,
                last: 20
            }
        );

        // Without any loss report, the no-progress timeout gives up.
        let mut a = FileAssembler::new(limits());
        feed(&mut a, t0, 2, &[9]);
        a.poll_timeouts(t0 + Duration::from_secs(59));
        assert_eq!(a.poll_incomplete(), None);
        a.poll_timeouts(t0 + Duration::from_mins(1));
        let r = a.poll_incomplete().expect("timed out");
        assert_eq!(r.missing, vec![(900, 1_000)]);
        assert_eq!(
            r.cause,
            IncompleteCause::NoProgress {
                idle: Duration::from_mins(1)
            }
        );
    }

    #[test]
    fn many_gaps_are_counted_and_the_report_is_bounded() {
        let mut a = FileAssembler::new(FilesLimits {
            max_total_bytes: 1 << 20,
            ..limits()
        });
        let t0 = Instant::now();
        let size = 100 * CHUNK;
        for i in (0..100).step_by(2) {
            let _ = a.handle_chunk(t0, S, Lane::Bulk, u64::from(i), &chunk(1, "f", size, i));
        }
        a.poll_timeouts(t0 + Duration::from_mins(1));
        let r = a.poll_incomplete().expect("incomplete");
        assert_eq!(r.missing_ranges, 50);
        assert_eq!(r.missing.len(), MAX_REPORTED_RANGES);
        assert_eq!(r.missing[0], (100, 200));
        assert_eq!(r.missing_bytes, 50 * CHUNK);
    }

    #[test]
    fn abandoned_file_frees_its_budget_and_ignores_later_chunks() {
        let mut a = FileAssembler::new(limits());
        let t = Instant::now();
        assert!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(1, "f", 9_000, 0))
                .is_ok()
        );
        let key = FileKey {
            session: S,
            file_id: 1,
        };
        assert!(a.abandon(key));
        assert!(!a.abandon(key));
        assert_eq!(a.declared_bytes(), 0);
        assert_eq!(
            a.handle_chunk(t, S, Lane::Bulk, 0, &chunk(1, "f", 9_000, 1)),
            Ok(ChunkOutcome::Finished)
        );
    }

    proptest::proptest! {
        /// Any mix of chunks (random offsets, lengths, duplicates) never
        /// panics, and the byte count matches a plain bitmap.
        #[test]
        fn ranges_match_a_bitmap(
            pieces in proptest::collection::vec((0u64..600, 0usize..120), 1..60),
        ) {
            let mut a = FileAssembler::new(limits());
            let t = Instant::now();
            let size = 600;
            let mut bitmap = vec![false; size as usize];
            for (i, (offset, len)) in pieces.into_iter().enumerate() {
                let mut c = chunk(1, "f", size, 0);
                c.offset = offset;
                c.data = vec![0; len];
                let fits = offset + len as u64 <= size;
                match a.handle_chunk(t, S, Lane::Bulk, i as u64, &c) {
                    Err(FileError::OutOfRange { .. }) => proptest::prop_assert!(!fits),
                    Ok(ChunkOutcome::Finished) => {
                        proptest::prop_assert!(bitmap.iter().all(|b| *b));
                    }
                    Ok(out) => {
                        proptest::prop_assert!(fits);
                        let before = bitmap.iter().filter(|b| **b).count() as u64;
                        for b in &mut bitmap[offset as usize..offset as usize + len] {
                            *b = true;
                        }
                        let after = bitmap.iter().filter(|b| **b).count() as u64;
                        match out {
                            ChunkOutcome::Accepted { new_bytes, complete, .. } => {
                                proptest::prop_assert_eq!(new_bytes, after - before);
                                proptest::prop_assert_eq!(complete, after == size);
                            }
                            ChunkOutcome::Duplicate => proptest::prop_assert_eq!(after, before),
                            ChunkOutcome::Finished => {}
                        }
                    }
                    Err(e) => proptest::prop_assert!(false, "unexpected {e}"),
                }
            }
            if let Some(f) = a.files.values().next() {
                let missing: u64 = f.gaps().map(|(s, e, _, _)| e - s).sum();
                proptest::prop_assert_eq!(missing, f.size - f.received);
            }
        }
    }
}
