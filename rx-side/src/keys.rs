//! Loading pre-shared key files (the sender's `keygen` writes them).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use weir_shared::seal::{Keyring, load_key_file};

/// Read every key file, refusing any that group or others can read.
pub fn load_keyring<P: AsRef<Path>>(files: &[P]) -> anyhow::Result<Keyring> {
    files
        .iter()
        .map(|f| {
            let f = f.as_ref();
            let read = || -> anyhow::Result<_> {
                let mode = std::fs::metadata(f)?.permissions().mode();
                Ok(load_key_file(mode, &std::fs::read_to_string(f)?)?)
            };
            read().with_context(|| format!("key file {}", f.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Keyring::new)
}
