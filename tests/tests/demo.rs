//! The README's first command keeps working: the demo runs the whole pair
//! on its embedded default and every record arrives.

use std::process::Command;

#[test]
fn demo_runs_the_pair_and_every_record_arrives() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-demo"))
        .args(["--once", "--rows", "5000", "--loss", "3"])
        .output()
        .expect("run weir-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("every record arrived"), "{text}");
    assert!(text.contains("mosquitto_sub -h 127.0.0.1 -p "), "{text}");
    assert!(text.contains("records   sent      5015"), "{text}");
}
