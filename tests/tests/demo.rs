//! The README's first command keeps working: the demo runs the whole pair
//! on its embedded default, its default 100 000 rows, and every record
//! arrives and is acknowledged by the broker.

use std::process::Command;

#[test]
fn demo_runs_the_pair_and_every_record_arrives() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-demo"))
        .args(["--once", "--loss", "3"])
        .output()
        .expect("run weir-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("every record arrived and the broker acknowledged it"),
        "{text}"
    );
    assert!(text.contains("mosquitto_sub -h 127.0.0.1 -p "), "{text}");
    assert!(text.contains("records   sent    100015"), "{text}");
    // The sample export's one exact duplicate, and no other: the
    // generated rows never repeat.
    assert!(
        text.contains("  1 exact duplicate points withheld"),
        "{text}"
    );
}
