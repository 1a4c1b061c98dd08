//! The DQ engine's hot path allocates nothing: checking a point of a known
//! numeric tag, with every numeric check on, leaves the heap alone.
//!
//! A counting global allocator needs `unsafe impl GlobalAlloc`; it lives in
//! this test binary only, and counts per thread so other tests running in
//! parallel do not disturb the count.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use weir_shared::dq::{DqConfig, Engine};
use weir_shared::record::{NativeQuality, Point, SourceSystem, TsResolution, Value};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local `Cell` that itself never
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

const T0: i64 = 1_710_057_600_000_000_000;
const S: i64 = 1_000_000_000;

#[test]
fn dq_check_of_a_known_tag_does_not_allocate() {
    let cfg: DqConfig = serde_json::from_value(serde_json::json!({
        "defaults": {"lo": 0.0, "hi": 100.0, "suspect_lo": 1.0, "suspect_hi": 99.0,
            "roc_max": 10.0, "spike_suspect": 50.0, "gap": "1h",
            "expected_interval": "10s", "unit": "degC"},
        "class": [{"match": "TT*", "flatline_time": "1h"}]
    }))
    .expect("deserializes");
    let mut engine = Engine::new(cfg.validate().expect("valid"));
    let mut events = Vec::with_capacity(16);
    let mut point = Point {
        native_quality: NativeQuality::OpcDa(192),
        unit: Some("degC".into()),
        ts_resolution: TsResolution::Local,
        ..Point::new(SourceSystem::Other, "TT101.PV", T0, Value::F64(50.0))
    };
    // Warm up: the tag's state and the map entry are created here.
    for i in 0..50_i64 {
        point.seq = i.unsigned_abs();
        point.ts_ns = T0 + i * S;
        engine.check_into(&point, point.ts_ns, &mut events);
    }
    events.clear();
    let before = allocations();
    for i in 50..10_050_i64 {
        point.seq = i.unsigned_abs();
        point.ts_ns = T0 + i * S;
        // A triangle wave keeps every check passing.
        point.value = Value::F64(50.0 + (6 - (i % 12 - 6).abs()) as f64);
        let verdict = engine.check_into(&point, point.ts_ns, &mut events);
        assert!(verdict.withhold.is_none());
        engine.tick_into(point.ts_ns, &mut events);
    }
    assert_eq!(allocations() - before, 0, "steady-state check allocated");
    assert!(events.is_empty(), "{events:?}");
    // The counter does count: a new tag allocates its table entry.
    point.tag = "TT102.PV".into();
    let before = allocations();
    engine.check_into(&point, point.ts_ns, &mut events);
    assert!(allocations() > before);
}
