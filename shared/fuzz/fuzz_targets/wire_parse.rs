//! `wire::parse` on arbitrary bytes. Whatever parses must re-emit to the
//! very same bytes (the header has no slack: every field is checked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_shared::wire;

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse(data);
    // Random bytes almost never carry a valid CRC, so also try them with
    // the CRC fixed up: that reaches the header checks.
    let mut fixed = data.to_vec();
    if fixed.len() >= wire::OVERHEAD {
        let body = fixed.len() - wire::CRC_LEN;
        let crc = crc32fast::hash(&fixed[..body]);
        fixed[body..].copy_from_slice(&crc.to_be_bytes());
    }
    for buf in [data, &fixed[..]] {
        if let Ok((header, payload)) = wire::parse(buf) {
            assert_eq!(header.payload_len(), payload.len());
            assert_eq!(header.datagram_len(), buf.len());
            let mut tag = [0u8; wire::TAG_LEN];
            tag.copy_from_slice(wire::tag_of(buf).expect("a parsed datagram has a tag"));
            let mut out = Vec::new();
            wire::emit_datagram(&header, payload, &tag, &mut out);
            assert_eq!(out, buf, "emit_datagram(parse(x)) != x");
            let mut slot = vec![0u8; header.datagram_len()];
            wire::emit_into(&header, payload, &tag, &mut slot);
            assert_eq!(slot, buf, "emit_into(parse(x)) != x");
            let aad = header.aad();
            assert_eq!(aad[..], buf[..wire::AAD_LEN]);
        }
    }
});
