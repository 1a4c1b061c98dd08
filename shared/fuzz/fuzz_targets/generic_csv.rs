//! The `generic-csv` parser (`formats::generic_csv`, through
//! `Format::parse`) on arbitrary bytes, under several column mappings.
//!
//! Input: a context selector byte, a mapping selector byte (timestamp
//! format, delimiter, optional columns), then the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{check_points, parse_context, selector};
use weir_shared::formats::{CsvMapping, Format, TsFormat};

fn ts_format(sel: u8) -> TsFormat {
    match sel % 7 {
        0 => TsFormat::Rfc3339,
        1 => TsFormat::EpochMs,
        2 => TsFormat::EpochS,
        3 => TsFormat::EpochNs,
        // Local day-first, as in a European export.
        4 => TsFormat::Pattern("%d.%m.%Y %H:%M:%S".into()),
        // With an offset: no zone needed.
        5 => TsFormat::Pattern("%Y-%m-%d %H:%M:%S%.f %z".into()),
        _ => TsFormat::Pattern("%s".into()),
    }
}

fn mapping(sel: u8) -> CsvMapping {
    CsvMapping {
        tag: "Sensor".into(),
        timestamp: "Time".into(),
        value: "Reading".into(),
        quality: (sel & 0x08 == 0).then(|| "Q".into()),
        unit: (sel & 0x10 == 0).then(|| "EU".into()),
        ts_format: ts_format(sel),
        delimiter: [b',', b';', b'\t', b'|'][usize::from(sel >> 5) % 4],
    }
}

fuzz_target!(|data: &[u8]| {
    let (sel, rest) = selector(data);
    let (map_sel, bytes) = selector(rest);
    let mut ctx = parse_context(sel, "export.csv");
    // Bit 7 of the context selector drops the mapping: the parser must
    // refuse, not panic.
    if sel & 0x80 == 0 {
        let m = mapping(map_sel);
        // Config validation runs before any file is parsed; a mapping it
        // refuses never reaches the parser.
        if m.problem().is_some() {
            return;
        }
        ctx.csv_map = Some(m);
    }
    check_points(Format::GenericCsv.parse(bytes, &ctx));
});
