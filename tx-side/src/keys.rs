//! Loading and generating pre-shared key files.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use weir_shared::seal::{Keyring, Psk, load_key_file};
use weir_shared::wire::KeyId;

/// Read every key file, refusing any that group or others can read.
pub fn load_keyring<P: AsRef<Path>>(files: &[P]) -> anyhow::Result<Keyring> {
    let mut keys = Vec::with_capacity(files.len());
    for f in files {
        let f = f.as_ref();
        let mode = std::fs::metadata(f)
            .with_context(|| format!("key file {}", f.display()))?
            .permissions()
            .mode();
        let text =
            std::fs::read_to_string(f).with_context(|| format!("key file {}", f.display()))?;
        keys.push(load_key_file(mode, &text).with_context(|| format!("key file {}", f.display()))?);
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
