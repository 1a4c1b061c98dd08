//! The `opcua-jsonl` parser (`formats::opcua`, through `Format::parse` as the
//! sender calls it) on arbitrary bytes. The first byte picks the parse
//! context: zone or none, configured tag, historical, discrete tags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{check_points, parse_context, selector};
use weir_shared::formats::Format;

fuzz_target!(|data: &[u8]| {
    let (sel, bytes) = selector(data);
    let ctx = parse_context(sel, "opcua_historyread.jsonl");
    check_points(Format::OpcUa.parse(bytes, &ctx));
});
