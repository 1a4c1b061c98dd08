//! Writing pre-shared key files: `weir-tx keygen` and `weir-rx keygen`.
//!
//! Both programs write a key (one function, so one file format), so the
//! key can be made on whichever host the site's key procedure names and
//! copied to the other over the operator's approved path: the diode
//! carries nothing back. Loading keys stays with each side.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use weir_shared::seal::Psk;
use weir_shared::wire::KeyId;

/// The `keygen` subcommand's arguments, the same for both programs.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write it; an existing file is never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// Key id (both sides refer to the key by it).
    #[arg(long, default_value_t = 1)]
    pub id: u16,
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

/// `keygen`: write the key and say where.
pub fn keygen_command(args: &KeygenArgs) -> anyhow::Result<()> {
    keygen(&args.out, args.id)?;
    println!("wrote key id {} to {}", args.id, args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_key_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("weir-3.key");
        keygen(&out, 3).expect("keygen");
        let mode = std::fs::metadata(&out).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&out).expect("read");
        assert!(keygen(&out, 3).is_err(), "overwrote a key");
        assert_eq!(std::fs::read_to_string(&out).expect("read"), text);
    }
}
