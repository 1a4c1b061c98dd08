//! The `pi-webapi-json` parser (`formats::pi_webapi`, through `Format::parse` as the
//! sender calls it) on arbitrary bytes. The first byte picks the parse
//! context: zone or none, configured tag, historical, discrete tags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{check_points, parse_context, selector};
use weir_shared::formats::Format;

fuzz_target!(|data: &[u8]| {
    let (sel, bytes) = selector(data);
    let ctx = parse_context(sel, "TT101.PV.json");
    check_points(Format::PiWebApi.parse(bytes, &ctx));
});
