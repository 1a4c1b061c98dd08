//! Syslog over TCP: cutting a byte stream into messages (RFC 6587).
//!
//! Senders use one of two framings, sometimes on the same listener:
//!
//! - **octet counting** (§3.4.1): `MSG-LEN SP SYSLOG-MSG`, the length in
//!   decimal without leading zeros. Exact, and the message may contain LF;
//! - **non-transparent** (§3.4.2): messages terminated by LF (a CR before it
//!   is dropped). Simple, but a message cannot contain LF.
//!
//! In [`Framing::Auto`] each frame is classified by its first byte, like
//! rsyslog does: a digit starts an octet count, anything else (`<`, or the
//! month of a PRI-less BSD message) a line. CR and LF between frames are
//! skipped, so octet-counted senders that add a newline work too.
//!
//! The framer never buffers more than one maximal frame. A frame longer than
//! `max_frame_bytes` yields one [`AlertError::TooLong`] item and its bytes are
//! discarded as they arrive: for an octet count exactly the announced length,
//! for a line everything up to the next LF. A garbled octet count yields
//! [`AlertError::Malformed`] and the framer resynchronises at the next LF.
//!
//! A message is complete only with its end: the LF of a line, the last of
//! an octet count's bytes. When the stream ends (the peer closed, or the
//! sender stops) inside one, the rest becomes one
//! [`AlertError::Truncated`] item, never a frame: a connection cut inside
//! a line must not turn its first half into an alert.
//!
//! Sans-IO use:
//!
//! ```
//! # use weir_shared::alerts::{Framing, SyslogFramer};
//! let mut framer = SyslogFramer::new(Framing::Auto, 8192);
//! let mut input: &[u8] = b"11 <13>1 - - x<13>Mar 10 08:00:00 h t: y\n";
//! let mut frames = Vec::new();
//! while !input.is_empty() {
//!     let taken = framer.handle_bytes(input);
//!     input = &input[taken..];
//!     while let Some(frame) = framer.poll_frame() {
//!         frames.push(frame.map(<[u8]>::to_vec));
//!     }
//! }
//! assert_eq!(frames.len(), 2);
//! ```

use std::ops::Range;

use super::AlertError;

/// Longest octet count accepted, in digits (up to 9,999,999,999 bytes, far
/// above any sane limit: larger counts are treated as garbage, not size).
const MAX_COUNT_DIGITS: usize = 10;
/// Bytes an octet-count prefix may take: the digits and the space.
const MAX_PREFIX_BYTES: usize = MAX_COUNT_DIGITS + 1;
/// The stream ended inside an octet-counted frame.
const TRUNCATED_FRAME: AlertError = AlertError::Truncated("octet-counted frame");
/// The stream ended inside a line (no LF).
const TRUNCATED_LINE: AlertError = AlertError::Truncated("line: the stream ended before its LF");

/// How a stream is framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Framing {
    /// Per frame: a leading digit means octet counting, anything else LF.
    #[default]
    Auto,
    /// Octet counting only (RFC 6587 §3.4.1).
    OctetCounted,
    /// LF-terminated only (RFC 6587 §3.4.2).
    LfTerminated,
}

/// What to throw away from the input before buffering again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    /// The rest of an oversized octet-counted frame.
    Bytes(usize),
    /// The rest of an oversized or garbled line, up to and including LF.
    ToLf,
}

/// Cuts a syslog TCP stream into messages; see the module docs.
#[derive(Debug, Clone)]
pub struct SyslogFramer {
    framing: Framing,
    max_frame_bytes: usize,
    buf: Vec<u8>,
    /// First byte of `buf` not yet handed out.
    start: usize,
    skip: Skip,
    eof: bool,
}

impl SyslogFramer {
    /// A framer for one connection, accepting messages of at most
    /// `max_frame_bytes` (not counting the octet count or line terminator).
    pub fn new(framing: Framing, max_frame_bytes: usize) -> Self {
        Self {
            framing,
            max_frame_bytes,
            buf: Vec::new(),
            start: 0,
            skip: Skip::Nothing,
            eof: false,
        }
    }

    /// Most bytes the framer ever holds: one maximal frame, its octet count,
    /// and a CR LF.
    pub fn capacity_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_add(MAX_PREFIX_BYTES + 2)
    }

    /// Bytes held and not yet handed out as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Offer stream bytes; returns how many were taken (buffered or
    /// discarded). Fewer than offered means the buffer is full: drain
    /// [`poll_frame`](Self::poll_frame) until `None`, then offer the rest;
    /// after that at least one byte is always taken. Nothing is taken after
    /// [`handle_eof`](Self::handle_eof).
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> usize {
        if self.eof {
            return 0;
        }
        let rest = self.skip_input(bytes);
        if self.skip != Skip::Nothing {
            return bytes.len();
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let room = self.capacity_bytes().saturating_sub(self.buf.len());
        let take = room.min(rest.len());
        self.buf
            .extend_from_slice(rest.get(..take).unwrap_or_default());
        bytes.len() - rest.len() + take
    }

    /// The stream ended: a final line without LF, like a partial
    /// octet-counted frame, becomes an [`AlertError::Truncated`] item.
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// The next complete message, an error item for a frame that was
    /// refused, or `None` when more input is needed.
    pub fn poll_frame(&mut self) -> Option<Result<&[u8], AlertError>> {
        match self.next_item()? {
            Ok(range) => Some(Ok(self.buf.get(range).unwrap_or_default())),
            Err(e) => Some(Err(e)),
        }
    }

    fn next_item(&mut self) -> Option<Result<Range<usize>, AlertError>> {
        if self.skip != Skip::Nothing {
            return None;
        }
        let pending = self.buf.get(self.start..)?;
        let gap = pending
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        self.start += gap;
        let pending = self.buf.get(self.start..)?;
        let first = *pending.first()?;
        let octet = match self.framing {
            Framing::Auto => first.is_ascii_digit(),
            Framing::OctetCounted => true,
            Framing::LfTerminated => false,
        };
        if octet {
            self.next_octet_counted()
        } else {
            self.next_line()
        }
    }

    fn next_octet_counted(&mut self) -> Option<Result<Range<usize>, AlertError>> {
        let pending = self.buf.get(self.start..)?;
        let available = pending.len();
        match read_octet_count(pending) {
            Err(e) => {
                self.resync_at_lf();
                Some(Err(e))
            }
            Ok(None) if self.eof => {
                self.start = self.buf.len();
                Some(Err(TRUNCATED_FRAME))
            }
            Ok(None) => None,
            Ok(Some((prefix, len))) => {
                let body = available - prefix;
                if len > self.max_frame_bytes {
                    if body >= len {
                        self.start += prefix + len;
                    } else {
                        self.start = self.buf.len();
                        self.skip = Skip::Bytes(len - body);
                    }
                    return Some(Err(AlertError::TooLong {
                        limit: self.max_frame_bytes,
                    }));
                }
                if body >= len {
                    let from = self.start + prefix;
                    self.start = from + len;
                    return Some(Ok(from..from + len));
                }
                if self.eof {
                    self.start = self.buf.len();
                    return Some(Err(TRUNCATED_FRAME));
                }
                None
            }
        }
    }

    fn next_line(&mut self) -> Option<Result<Range<usize>, AlertError>> {
        let pending = self.buf.get(self.start..)?;
        let (line_len, consumed) = match pending.iter().position(|&b| b == b'\n') {
            Some(lf) => (lf, lf + 1),
            None if self.eof => {
                self.start = self.buf.len();
                return Some(Err(TRUNCATED_LINE));
            }
            None => {
                // Room for a maximal line and its CR: anything longer
                // without an LF is already too long.
                if pending.len() > self.max_frame_bytes.saturating_add(1) {
                    self.start = self.buf.len();
                    self.skip = Skip::ToLf;
                    return Some(Err(AlertError::TooLong {
                        limit: self.max_frame_bytes,
                    }));
                }
                return None;
            }
        };
        let line = pending.get(..line_len).unwrap_or_default();
        let len = line.strip_suffix(b"\r").map_or(line_len, <[u8]>::len);
        let from = self.start;
        self.start += consumed;
        if len > self.max_frame_bytes {
            return Some(Err(AlertError::TooLong {
                limit: self.max_frame_bytes,
            }));
        }
        Some(Ok(from..from + len))
    }

    /// After a garbled octet count: drop everything up to the next LF.
    fn resync_at_lf(&mut self) {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        if let Some(lf) = pending.iter().position(|&b| b == b'\n') {
            self.start += lf + 1;
        } else {
            self.start = self.buf.len();
            if !self.eof {
                self.skip = Skip::ToLf;
            }
        }
    }

    /// Discard what the current skip covers; returns the rest of `bytes`.
    fn skip_input<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        match self.skip {
            Skip::Nothing => bytes,
            Skip::Bytes(left) => {
                let n = left.min(bytes.len());
                self.skip = if n == left {
                    Skip::Nothing
                } else {
                    Skip::Bytes(left - n)
                };
                bytes.get(n..).unwrap_or_default()
            }
            Skip::ToLf => match bytes.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    self.skip = Skip::Nothing;
                    bytes.get(lf + 1..).unwrap_or_default()
                }
                None => &[],
            },
        }
    }
}

/// `MSG-LEN SP` at the front of `buf`: `Ok(Some((prefix bytes, MSG-LEN)))`,
/// or `Ok(None)` if `buf` ends inside the count.
fn read_octet_count(buf: &[u8]) -> Result<Option<(usize, usize)>, AlertError> {
    const BAD: AlertError = AlertError::Malformed("octet count");
    let mut len: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b' ' if i > 0 => return Ok(Some((i + 1, len))),
            b'0' if i == 0 => return Err(BAD),
            b'0'..=b'9' if i < MAX_COUNT_DIGITS => {
                len = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(b - b'0')))
                    .ok_or(BAD)?;
            }
            _ => return Err(BAD),
        }
    }
    Ok(None)
}

/// A message cut from the front of a buffer, and the bytes after it.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// One octet-counted frame from the front of `buf`: the message and the
/// bytes after it, or `Ok(None)` if `buf` holds only part of the frame.
/// For callers that hold a whole buffer; streams use [`SyslogFramer`].
pub fn split_octet_counted(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<Split<'_>>, AlertError> {
    let Some((prefix, len)) = read_octet_count(buf)? else {
        return Ok(None);
    };
    if len > max_frame_bytes {
        return Err(AlertError::TooLong {
            limit: max_frame_bytes,
        });
    }
    let body = buf.get(prefix..).unwrap_or_default();
    Ok((body.len() >= len).then(|| body.split_at(len)))
}

/// One LF-terminated frame from the front of `buf` (a CR before the LF is
/// dropped): the message and the bytes after the LF, or `Ok(None)` if there
/// is no LF yet and the line is still within `max_frame_bytes`.
pub fn split_lf(buf: &[u8], max_frame_bytes: usize) -> Result<Option<Split<'_>>, AlertError> {
    let too_long = AlertError::TooLong {
        limit: max_frame_bytes,
    };
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > max_frame_bytes.saturating_add(1) {
            Err(too_long)
        } else {
            Ok(None)
        };
    };
    let (line, rest) = buf.split_at(lf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_frame_bytes {
        return Err(too_long);
    }
    Ok(Some((line, rest.get(1..).unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Item = Result<Vec<u8>, AlertError>;

    /// Feed `chunks` one after another, draining frames as a shell would.
    fn run(framer: &mut SyslogFramer, chunks: &[&[u8]], eof: bool) -> Vec<Item> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            loop {
                let taken = framer.handle_bytes(input);
                assert!(framer.buffered_bytes() <= framer.capacity_bytes());
                input = &input[taken..];
                let before = out.len();
                while let Some(item) = framer.poll_frame() {
                    out.push(item.map(<[u8]>::to_vec));
                }
                if input.is_empty() {
                    break;
                }
                assert!(taken > 0 || out.len() > before, "no progress");
            }
        }
        if eof {
            framer.handle_eof();
            while let Some(item) = framer.poll_frame() {
                out.push(item.map(<[u8]>::to_vec));
            }
        }
        out
    }

    #[allow(clippy::unnecessary_wraps)]
    fn ok(s: &[u8]) -> Item {
        Ok(s.to_vec())
    }

    #[test]
    fn octet_counted_frames() {
        let mut f = SyslogFramer::new(Framing::OctetCounted, 64);
        let got = run(&mut f, &[b"5 hello3 abc11 line\nbreaks"], false);
        assert_eq!(got, [ok(b"hello"), ok(b"abc"), ok(b"line\nbreaks")]);
    }

    #[test]
    fn lf_frames_with_cr_and_blank_lines() {
        let mut f = SyslogFramer::new(Framing::LfTerminated, 64);
        let got = run(&mut f, &[b"one\r\n\n\ntwo\nthree\n"], true);
        assert_eq!(got, [ok(b"one"), ok(b"two"), ok(b"three")]);
    }

    #[test]
    fn frames_split_across_reads() {
        let stream: &[u8] = b"11 <13>1 - - x\n<13>Mar 10 08:00:00 h t: y\n7 abc\ndef";
        let want = [
            ok(b"<13>1 - - x"),
            ok(b"<13>Mar 10 08:00:00 h t: y"),
            ok(b"abc\ndef"),
        ];
        // Every split point, and byte by byte.
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut f = SyslogFramer::new(Framing::Auto, 64);
            assert_eq!(run(&mut f, &[a, b], false), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let mut f = SyslogFramer::new(Framing::Auto, 64);
        assert_eq!(run(&mut f, &bytes, false), want);
    }

    #[test]
    fn oversized_octet_frame_is_skipped_exactly() {
        let mut f = SyslogFramer::new(Framing::Auto, 4);
        let got = run(&mut f, &[b"10 0123", b"456789", b"2 ok"], false);
        assert_eq!(got, [Err(AlertError::TooLong { limit: 4 }), ok(b"ok")]);
        // Whole oversized frame already buffered.
        let mut f = SyslogFramer::new(Framing::Auto, 4);
        let got = run(&mut f, &[b"6 abcdef2 ok"], false);
        assert_eq!(got, [Err(AlertError::TooLong { limit: 4 }), ok(b"ok")]);
    }

    #[test]
    fn oversized_line_is_skipped_to_lf() {
        let mut f = SyslogFramer::new(Framing::LfTerminated, 4);
        let got = run(&mut f, &[b"abcdefghij", b"klmnop", b"qr\nok\n"], false);
        assert_eq!(got, [Err(AlertError::TooLong { limit: 4 }), ok(b"ok")]);
        // Too long but complete in one read.
        let mut f = SyslogFramer::new(Framing::LfTerminated, 4);
        let got = run(&mut f, &[b"abcde\nabcd\r\n"], false);
        assert_eq!(got, [Err(AlertError::TooLong { limit: 4 }), ok(b"abcd")]);
    }

    #[test]
    fn buffer_stays_bounded_under_a_flood() {
        let mut f = SyslogFramer::new(Framing::Auto, 100);
        let flood = vec![b'x'; 1 << 20];
        let got = run(&mut f, &[b"<13>", &flood, b"\n<13>fine\n"], false);
        assert_eq!(
            got,
            [Err(AlertError::TooLong { limit: 100 }), ok(b"<13>fine")]
        );
        assert!(f.buf.capacity() <= 2 * f.capacity_bytes());
    }

    #[test]
    fn garbled_octet_count_resyncs_at_lf() {
        let mut f = SyslogFramer::new(Framing::OctetCounted, 64);
        let got = run(
            &mut f,
            &[b"12x junk\n3 abc", b"099 more junk", b"\n2 ok"],
            false,
        );
        let bad = Err(AlertError::Malformed("octet count"));
        assert_eq!(got, [bad.clone(), ok(b"abc"), bad, ok(b"ok")]);
        let mut f = SyslogFramer::new(Framing::OctetCounted, 64);
        assert_eq!(
            run(&mut f, &[b"12345678901 x\n"], false),
            [Err(AlertError::Malformed("octet count"))]
        );
    }

    #[test]
    fn a_frame_the_end_of_stream_cut_is_truncated_never_a_frame() {
        let mut f = SyslogFramer::new(Framing::Auto, 64);
        assert_eq!(run(&mut f, &[b"5 abc"], true), [Err(TRUNCATED_FRAME)]);
        assert_eq!(f.handle_bytes(b"more"), 0);
        // A line without its LF: the connection was cut inside it.
        for framing in [Framing::Auto, Framing::LfTerminated] {
            let mut f = SyslogFramer::new(framing, 64);
            assert_eq!(
                run(&mut f, &[b"<13>first\n<13>la", b"st"], true),
                [ok(b"<13>first"), Err(TRUNCATED_LINE)]
            );
            assert_eq!(f.poll_frame(), None, "reported once");
        }
        assert_eq!(TRUNCATED_LINE.code(), "truncated");
        // Held, not cut, while the stream is open.
        let mut f = SyslogFramer::new(Framing::Auto, 64);
        assert_eq!(run(&mut f, &[b"<13>la", b"st"], false), []);
        assert_eq!(f.buffered_bytes(), 8);
        f.handle_bytes(b"\n");
        assert_eq!(f.poll_frame(), Some(Ok(&b"<13>last"[..])));
        let mut f = SyslogFramer::new(Framing::Auto, 64);
        assert_eq!(run(&mut f, &[b"\r\n"], true), []);
    }

    #[test]
    fn stateless_helpers() {
        assert_eq!(
            split_octet_counted(b"3 abcrest", 8),
            Ok(Some((&b"abc"[..], &b"rest"[..])))
        );
        assert_eq!(split_octet_counted(b"3 ab", 8), Ok(None));
        assert_eq!(split_octet_counted(b"12", 8), Ok(None));
        assert_eq!(
            split_octet_counted(b"9 abc", 8),
            Err(AlertError::TooLong { limit: 8 })
        );
        assert_eq!(
            split_octet_counted(b"x", 8),
            Err(AlertError::Malformed("octet count"))
        );
        assert_eq!(split_lf(b"ab\r\ncd", 8), Ok(Some((&b"ab"[..], &b"cd"[..]))));
        assert_eq!(split_lf(b"abc", 8), Ok(None));
        assert_eq!(
            split_lf(b"abcdefghij", 8),
            Err(AlertError::TooLong { limit: 8 })
        );
        assert_eq!(
            split_lf(b"abcdefghi\n", 8),
            Err(AlertError::TooLong { limit: 8 })
        );
    }

    proptest::proptest! {
        #[test]
        fn framer_never_panics_and_stays_bounded(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(0usize..2048, 0..8),
            max in 0usize..64,
            mode in 0u8..3,
        ) {
            let framing = [Framing::Auto, Framing::OctetCounted, Framing::LfTerminated][usize::from(mode)];
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                chunks.push(&data[prev..c]);
                prev = c;
            }
            let mut f = SyslogFramer::new(framing, max);
            for frame in run(&mut f, &chunks, true).into_iter().flatten() {
                proptest::prop_assert!(frame.len() <= max);
            }
        }

        #[test]
        fn chunking_does_not_change_frames(
            msgs in proptest::collection::vec("[ -~]{1,40}", 1..10),
            cut in 0usize..400,
        ) {
            let mut stream = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                if i % 2 == 0 {
                    stream.extend_from_slice(format!("{} {m}", m.len()).as_bytes());
                } else {
                    stream.extend_from_slice(format!("<{m}\n").as_bytes());
                }
            }
            let cut = cut.min(stream.len());
            let mut whole = SyslogFramer::new(Framing::Auto, 64);
            let mut split = SyslogFramer::new(Framing::Auto, 64);
            let (a, b) = stream.split_at(cut);
            let got_whole = run(&mut whole, &[&stream], true);
            proptest::prop_assert_eq!(got_whole.len(), msgs.len());
            proptest::prop_assert_eq!(run(&mut split, &[a, b], true), got_whole);
        }
    }
}
