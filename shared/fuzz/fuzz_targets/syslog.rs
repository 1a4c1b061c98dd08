//! `alerts::parse_syslog` (RFC 5424, RFC 3164, CEF bodies) on arbitrary
//! bytes, and the stream framer (octet counting / LF) that cuts a TCP
//! syslog stream into the messages it parses.
//!
//! Input: a selector byte (zone, message limit, framing, read size), then
//! the bytes, parsed as one message and also as a stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{alert_context, check_alert, selector};
use weir_shared::alerts::{Framing, SyslogFramer, parse_syslog};

fuzz_target!(|data: &[u8]| {
    let (sel, bytes) = selector(data);
    let ctx = alert_context(sel);
    check_alert(parse_syslog(bytes, &ctx));

    let framing = match sel >> 6 {
        0 => Framing::Auto,
        1 => Framing::OctetCounted,
        _ => Framing::LfTerminated,
    };
    let mut framer = SyslogFramer::new(framing, ctx.max_message_bytes);
    // Every frame uses up at least one input byte; more frames than that
    // means the framer is stuck handing out the same thing.
    let max_frames = 2 * bytes.len() + 2;
    let mut frames = 0usize;
    let mut drain = |framer: &mut SyslogFramer| {
        while let Some(frame) = framer.poll_frame() {
            if let Ok(msg) = frame {
                check_alert(parse_syslog(msg, &ctx));
            }
            frames += 1;
            assert!(frames <= max_frames, "framer keeps returning frames");
        }
    };
    // Reads of varying sizes, as a socket hands them over.
    let mut read = 1 + usize::from(sel & 0x07) * 5;
    let mut rest = bytes;
    while !rest.is_empty() {
        let chunk = &rest[..read.min(rest.len())];
        let taken = framer.handle_bytes(chunk);
        // The framer was drained before this call, so it must take
        // something.
        assert!(
            taken >= 1 && taken <= chunk.len(),
            "took {taken} of {}",
            chunk.len()
        );
        assert!(framer.buffered_bytes() <= framer.capacity_bytes());
        rest = &rest[taken..];
        drain(&mut framer);
        read = read % 37 + 1;
    }
    framer.handle_eof();
    drain(&mut framer);
});
