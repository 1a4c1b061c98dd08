//! Loading and generating pre-shared key files.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use weir_shared::credentials::{self, CREDENTIALS_DIRECTORY};
use weir_shared::seal::{Keyring, Psk, load_key_file};
use weir_shared::wire::KeyId;

/// Read every key file, refusing any that group or others can read. A
/// relative path names a systemd credential (see
/// [`weir_shared::credentials`]).
pub fn load_keyring<P: AsRef<Path>>(files: &[P]) -> anyhow::Result<Keyring> {
    let credentials_dir = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let mut keys = Vec::with_capacity(files.len());
    for f in files {
        let f = f.as_ref();
        let read = || -> anyhow::Result<_> {
            let secret = credentials::resolve(f, credentials_dir.as_deref())?;
            let mode = std::fs::metadata(&secret.path)?.permissions().mode();
            let text = std::fs::read_to_string(&secret.path)?;
            Ok(load_key_file(secret.checked_mode(mode), &text)?)
        };
        keys.push(read().with_context(|| format!("key file {}", f.display()))?);
    }
    Ok(Keyring::new(keys))
}

/// Write a fresh key with id `id` to `out`, mode 0600, refusing to
/// overwrite an existing file.
pub fn keygen(out: &Path, id: u16) -> anyhow::Result<()> {
    let psk = Psk::generate(KeyId(id), &ring::rand::SystemRandom::new())
        .map_err(|e| anyhow::anyhow!("drawing a key: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating key file {}", out.display()))?;
    f.write_all(psk.to_file_text().as_bytes())?;
    f.sync_all()?;
    Ok(())
}
