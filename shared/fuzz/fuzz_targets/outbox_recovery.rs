//! What the receiver reads back from its outbox after a restart, on
//! arbitrary bytes: a stored entry of any table (`outbox::decode_body`),
//! what validate then makes of a block entry (the batch frame and the
//! stored data-quality verdicts), and the kept data-quality state
//! (`dq::Engine::restore`). A corrupt or foreign outbox file must cost an
//! error per entry, never a panic.
//!
//! Input: a selector byte (table, entry key), then the stored value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::selector;
use weir_rx::pipeline::outbox::{Body, EntryRef, Table, decode_body};
use weir_shared::dq::{Engine, ValidDqConfig, decode_verdicts};
use weir_shared::record::{self, DecodeLimits};

const LIMITS: DecodeLimits = DecodeLimits {
    max_body_bytes: 64 << 10,
    max_records: 256,
};

/// Block entry head: version, session (16), lane, seq (u64 LE).
const BLOCK_HEAD: usize = 1 + 16 + 1 + 8;

fuzz_target!(|data: &[u8]| {
    let (sel, value) = selector(data);
    let table = Table::ALL[usize::from(sel & 0x03) % Table::ALL.len()];
    let at = EntryRef {
        table,
        key: u64::from(sel >> 2),
    };
    match decode_body(at, value) {
        Ok(Body::Event(m)) => {
            assert_eq!(table, Table::Events);
            assert!(value.len() >= 3 + m.topic.len());
            assert_eq!(value.len(), 3 + m.topic.len() + m.payload.len());
        }
        Ok(Body::Block(_)) => {
            assert_ne!(table, Table::Events);
            assert!(value.len() >= BLOCK_HEAD && matches!(value[0], 1 | 2));
            // The block's fields are private to the receiver; validate
            // reads the frame and verdicts that follow the head, so feed
            // those parts on as laid out there.
            let rest = &value[BLOCK_HEAD..];
            let (verdicts, frame) = if value[0] == 2 {
                let (len, rest) = rest.split_first_chunk::<4>().expect("decode_body checked");
                let len = u32::from_le_bytes(*len) as usize;
                let (d, f) = rest.split_at(len);
                (Some(d), f)
            } else {
                (None, rest)
            };
            if let Ok(batch) = record::decode_frame(frame, LIMITS) {
                let n_points = batch
                    .records
                    .iter()
                    .filter(|r| matches!(r, record::Record::Point(_)))
                    .count();
                if let Some(d) = verdicts
                    && let Ok(v) = decode_verdicts(d, n_points)
                {
                    assert!(v.len() <= n_points);
                }
            }
            if let Some(d) = verdicts {
                let _ = decode_verdicts(d, 64);
            }
        }
        Err(_) => {}
    }
    // The data-quality state kept beside the queue.
    if let Ok(engine) = Engine::restore(ValidDqConfig::default(), value) {
        assert!(engine.stats().tags <= ValidDqConfig::default().max_tags());
    }
});
