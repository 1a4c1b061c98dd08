//! Loading pre-shared key files. Writing one (`keygen`) is common to both
//! programs: `weir_service::keys`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use weir_shared::credentials::{self, CREDENTIALS_DIRECTORY};
use weir_shared::seal::{Keyring, load_key_file};

/// Read every key file, refusing any that group or others can read. A
/// relative path names a systemd credential (see
/// [`weir_shared::credentials`]).
pub fn load_keyring<P: AsRef<Path>>(files: &[P]) -> anyhow::Result<Keyring> {
    let credentials_dir = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    files
        .iter()
        .map(|f| {
            let f = f.as_ref();
            let read = || -> anyhow::Result<_> {
                let secret = credentials::resolve(f, credentials_dir.as_deref())?;
                let mode = std::fs::metadata(&secret.path)?.permissions().mode();
                let text = std::fs::read_to_string(&secret.path)?;
                Ok(load_key_file(secret.checked_mode(mode), &text)?)
            };
            read().with_context(|| format!("key file {}", f.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Keyring::new)
}

/// Writing a key (`keygen`): one function for both programs, so one
/// file format.
pub use weir_service::keys::keygen;
