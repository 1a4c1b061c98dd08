//! Secret files handed over as systemd credentials.
//!
//! Under systemd, a unit's `LoadCredential=NAME:/etc/weir/keys/weir-1.key`
//! lets the service read the key as `$CREDENTIALS_DIRECTORY/NAME`, a copy in
//! a private in-memory directory, while the original stays readable by root
//! alone. Weir's rule, the same for every secret file it reads (`keys.files`,
//! and on the receiver `mqtt.password_file` and the `mqtt.tls.*_file`s):
//!
//! - an **absolute** path is read as it is;
//! - a **relative** path is the name of a credential: a plain file name
//!   (no `/`, not `.` or `..`), read from the directory in
//!   `CREDENTIALS_DIRECTORY`. Without that variable it is an error, never a
//!   path relative to the working directory.
//!
//! The shell reads the variable and the file; the rule lives here so both
//! programs apply the same one.

use std::path::{Component, Path, PathBuf};

/// The environment variable systemd sets to the service's credentials
/// directory.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Why a relative secret path cannot be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A credential name, but no credentials directory is set.
    #[error(
        "is relative, so it names a systemd credential, but CREDENTIALS_DIRECTORY is not set \
         (give an absolute path, or run under a unit with LoadCredential=)"
    )]
    NoDirectory,
    /// A relative path that is not a plain file name.
    #[error("is relative but not a plain file name (a relative path names a systemd credential)")]
    NotAName,
}

/// A secret file's path after the credential rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPath {
    /// Where to read it.
    pub path: PathBuf,
    /// Whether it is a systemd credential (a file in the credentials
    /// directory).
    pub credential: bool,
}

impl SecretPath {
    /// The mode bits to hold against the "no access for group or others"
    /// rule. A credential's group bits are left out: systemd grants the
    /// service's user read access to a credential through an ACL where the
    /// filesystem has them, and a file's group bits then show the ACL mask,
    /// not a group's access. The directory itself is readable by the
    /// service alone.
    pub fn checked_mode(&self, mode: u32) -> u32 {
        if self.credential { mode & !0o070 } else { mode }
    }
}

/// Apply the credential rule to `path`, with `credentials_dir` the value of
/// [`CREDENTIALS_DIRECTORY`] (if set).
pub fn resolve(path: &Path, credentials_dir: Option<&Path>) -> Result<SecretPath, CredentialError> {
    if path.is_absolute() {
        return Ok(SecretPath {
            path: path.to_owned(),
            credential: false,
        });
    }
    let mut parts = path.components();
    let (Some(Component::Normal(name)), None) = (parts.next(), parts.next()) else {
        return Err(CredentialError::NotAName);
    };
    let dir = credentials_dir
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or(CredentialError::NoDirectory)?;
    Ok(SecretPath {
        path: dir.join(name),
        credential: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_read_as_they_are() {
        let p = Path::new("/etc/weir/keys/weir-1.key");
        for dir in [None, Some(Path::new("/run/credentials/weir-tx.service"))] {
            let r = resolve(p, dir).expect("absolute");
            assert_eq!(r.path, p);
            assert!(!r.credential);
            assert_eq!(r.checked_mode(0o640), 0o640);
        }
    }

    #[test]
    fn relative_names_are_credentials() {
        let dir = Path::new("/run/credentials/weir-rx.service");
        let r = resolve(Path::new("weir-1.key"), Some(dir)).expect("credential");
        assert_eq!(r.path, dir.join("weir-1.key"));
        assert!(r.credential);
        // The ACL mask shows in the group bits; others' bits still count.
        assert_eq!(r.checked_mode(0o100_440), 0o100_400);
        assert_eq!(r.checked_mode(0o444) & 0o077, 0o004);
    }

    #[test]
    fn a_credential_needs_the_directory() {
        assert_eq!(
            resolve(Path::new("weir-1.key"), None),
            Err(CredentialError::NoDirectory)
        );
        assert_eq!(
            resolve(Path::new("weir-1.key"), Some(Path::new(""))),
            Err(CredentialError::NoDirectory)
        );
    }

    #[test]
    fn only_plain_names_are_credentials() {
        let dir = Some(Path::new("/run/credentials/x"));
        for bad in [
            "keys/weir-1.key",
            "../weir-1.key",
            "..",
            ".",
            "./weir-1.key",
            "",
        ] {
            assert_eq!(
                resolve(Path::new(bad), dir),
                Err(CredentialError::NotAName),
                "{bad}"
            );
        }
    }
}
