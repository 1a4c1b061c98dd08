//! The `ignition-csv` parser (`formats::ignition`, through `Format::parse`)
//! and the `sqlth_te` tag-table parser on arbitrary bytes.
//!
//! Input: selector byte, then the data file. If the rest contains a NUL,
//! the part before it is read as the tag table (and used when it parses);
//! otherwise the fixture's table is used.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{check_points, parse_context, selector};
use weir_shared::formats::{Format, ignition};

/// The fixture's tag table (tests/fixtures/ignition_sqlth_te.csv).
const TAGS: &[u8] = b"id,tagpath,scid,datatype,querymode,created,retired
12,line2/tt101,1,1,0,1704067200000,
13,line2/pump7/running,1,0,0,1704067200000,
14,line2/batch/state,1,2,0,1704067200000,
";

static TABLE: LazyLock<Arc<std::collections::BTreeMap<i64, (String, i32)>>> =
    LazyLock::new(|| Arc::new(ignition::parse_tag_table(TAGS).expect("fixture table")));

fuzz_target!(|data: &[u8]| {
    let (sel, rest) = selector(data);
    let (table, bytes) = match rest.iter().position(|&b| b == 0) {
        Some(i) => match ignition::parse_tag_table(&rest[..i]) {
            Ok(t) => (Some(Arc::new(t)), &rest[i + 1..]),
            Err(_) => (None, &rest[i + 1..]),
        },
        None => (Some(Arc::clone(&TABLE)), rest),
    };
    let mut ctx = parse_context(sel, "ignition_sqlt_data_1_2024_03.csv");
    // Bit 7 drops the table: the parser must refuse, not panic.
    ctx.tag_table = if sel & 0x80 == 0 { table } else { None };
    check_points(Format::Ignition.parse(bytes, &ctx));
});
