//! `record::decode_frame` on arbitrary bytes with small limits, as-is and
//! behind a zstd frame header (so the fuzzer does not have to find a
//! valid header first). A frame that decodes must re-encode and decode to
//! the same batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_shared::record::{self, DecodeLimits, FRAME_HEADER_LEN, FRAME_VERSION};

const LIMITS: DecodeLimits = DecodeLimits {
    max_body_bytes: 64 << 10,
    max_records: 256,
};

/// Codec byte of zstd-compressed frames.
const ZSTD: u8 = 1;
/// Codec byte of plain frames.
const PLAIN: u8 = 0;

fn check(frame: &[u8]) {
    let Ok(batch) = record::decode_frame(frame, LIMITS) else {
        return;
    };
    assert!(batch.records.len() <= LIMITS.max_records as usize);
    for level in [None, Some(1)] {
        let mut again = Vec::new();
        record::encode_frame(&batch, level, &mut again).expect("decoded batch re-encodes");
        let back = record::decode_frame(&again, LIMITS).expect("re-encoded frame decodes");
        let mut third = Vec::new();
        record::encode_frame(&back, level, &mut third).expect("re-encodes");
        assert_eq!(again, third, "frame does not round-trip");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes as a body: the first two bytes give the declared
    // length (so it can be both right and wrong), the rest is the body.
    let (declared, body) = match data.split_first_chunk::<2>() {
        Some((d, rest)) => (u32::from(u16::from_be_bytes(*d)), rest),
        None => (0, data),
    };
    for codec in [PLAIN, ZSTD] {
        for len in [declared, body.len() as u32] {
            let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
            frame.push(FRAME_VERSION);
            frame.push(codec);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(body);
            check(&frame);
        }
    }
    // A real zstd stream of the bytes: reaches postcard through the zstd
    // path with a correct declared length.
    if let Ok(compressed) = zstd::bulk::compress(body, 1) {
        let mut frame = vec![FRAME_VERSION, ZSTD];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&compressed);
        check(&frame);
    }
});
