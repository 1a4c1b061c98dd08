//! The command lines: key generation, key-file permissions, config checks.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use weir_tests::{Site, binaries, write_key};

fn run(program: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn tx_config(site: &Site, key: &std::path::Path, extra_link: &str) -> String {
    let p = site.write(
        "tx.toml",
        &format!(
            "[link]\ndestination = \"127.0.0.1:47000\"\nrate_mbps = 10.0\n{extra_link}\n[keys]\nfiles = [\"{}\"]\nactive_key_id = 1\n",
            key.display()
        ),
    );
    p.display().to_string()
}

#[test]
fn keygen_writes_a_private_key_that_both_sides_accept() {
    let site = Site::new();
    let key = site.path("weir-1.key");
    let k = key.display().to_string();
    let (ok, out) = run(&binaries().tx, &["keygen", "--out", &k, "--id", "1"]);
    assert!(ok, "{out}");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never overwrites.
    let (ok, _) = run(&binaries().tx, &["keygen", "--out", &k]);
    assert!(!ok, "keygen must refuse to overwrite a key");
    let cfg = tx_config(&site, &key, "");
    let (ok, out) = run(&binaries().tx, &["check-config", "--config", &cfg]);
    assert!(ok, "{out}");
    let rx = site.write(
        "rx.toml",
        &format!("[link]\nlisten = \"127.0.0.1:47000\"\n[keys]\nfiles = [\"{k}\"]\n[mqtt]\nhost = \"127.0.0.1\"\n"),
    );
    let (ok, out) = run(
        &binaries().rx,
        &["check-config", "--config", &rx.display().to_string()],
    );
    assert!(ok, "{out}");
    assert!(out.contains("key ids [1]"), "{out}");
}

#[test]
fn the_receiver_makes_keys_the_sender_accepts() {
    let site = Site::new();
    let key = site.path("weir-2.key");
    let k = key.display().to_string();
    let (ok, out) = run(&binaries().rx, &["keygen", "--out", &k, "--id", "2"]);
    assert!(ok, "{out}");
    assert!(out.contains("wrote key id 2"), "{out}");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (ok, _) = run(&binaries().rx, &["keygen", "--out", &k, "--id", "2"]);
    assert!(!ok, "keygen must refuse to overwrite a key");
    let cfg = site.write(
        "tx.toml",
        &format!(
            "[link]\ndestination = \"127.0.0.1:47000\"\nrate_mbps = 10.0\n[keys]\nfiles = [\"{k}\"]\nactive_key_id = 2\n"
        ),
    );
    let (ok, out) = run(
        &binaries().tx,
        &["check-config", "--config", &cfg.display().to_string()],
    );
    assert!(ok, "{out}");
}

#[test]
fn group_or_world_readable_key_files_are_refused_by_name() {
    let site = Site::new();
    let key = site.path("open.key");
    write_key(&key, 1, [7; 32]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = tx_config(&site, &key, "");
    let (ok, out) = run(&binaries().tx, &["check-config", "--config", &cfg]);
    assert!(!ok, "a 0644 key file must be refused");
    assert!(
        out.contains("open.key") && out.contains("chmod 600"),
        "{out}"
    );
    let rx = site.write(
        "rx.toml",
        &format!("[link]\nlisten = \"127.0.0.1:47000\"\n[keys]\nfiles = [\"{}\"]\n[mqtt]\nhost = \"127.0.0.1\"\n", key.display()),
    );
    let (ok, out) = run(
        &binaries().rx,
        &["run", "--config", &rx.display().to_string()],
    );
    assert!(!ok && out.contains("open.key"), "{out}");
}

#[test]
fn bad_config_stops_startup_naming_the_key() {
    let site = Site::new();
    let key = site.path("k.key");
    write_key(&key, 1, [7; 32]);
    let cfg = tx_config(&site, &key, "mtu_bytes = 100");
    let (ok, out) = run(&binaries().tx, &["check-config", "--config", &cfg]);
    assert!(!ok);
    assert!(out.contains("link.mtu_bytes"), "{out}");
    let cfg = tx_config(&site, &key, "rate_mpbs = 5.0");
    let (ok, out) = run(&binaries().tx, &["run", "--config", &cfg]);
    assert!(!ok);
    assert!(
        out.contains("rate_mpbs"),
        "unknown keys are errors that name them: {out}"
    );
    let rx = site.write(
        "rx.toml",
        &format!(
            "[link]\nlisten = \"127.0.0.1:47000\"\n[keys]\nfiles = [\"{}\"]\n[mqtt]\nhost = \"127.0.0.1\"\nsite = \"a/b\"\n",
            key.display()
        ),
    );
    let (ok, out) = run(
        &binaries().rx,
        &["check-config", "--config", &rx.display().to_string()],
    );
    assert!(!ok && out.contains("mqtt.site"), "{out}");
}

#[test]
fn the_example_configs_parse() {
    // The example configs name their key as a systemd credential, and no
    // credentials directory is set here: parsing and validation must pass
    // up to the key files (tests/tests/systemd.rs loads them with one).
    for (bin, file) in [
        (&binaries().tx, "weir-tx.toml"),
        (&binaries().rx, "weir-rx.toml"),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../systemd")
            .join(file);
        let out = Command::new(bin)
            .args(["check-config", "--config", &path.display().to_string()])
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("run");
        let (ok, out) = (out.status.success(), String::from_utf8_lossy(&out.stderr));
        assert!(!ok);
        assert!(
            out.contains("key file weir-1.key") && out.contains("CREDENTIALS_DIRECTORY"),
            "validation reached the key files: {out}"
        );
    }
}
