//! How `publish` reaches the broker safely: TLS against a private CA
//! (rustls, ring provider), an optional client certificate, an optional
//! server-name override, and a user name with a password read from a file.
//!
//! ```text
//!  [mqtt.tls] ca_file ─┐
//!   cert_file, key_file ├─ load (startup, check-config) ──> rustls ClientConfig ─┐
//!   server_name ────────┘                                                          ├─> MqttOptions
//!  [mqtt] username, password_file (0600) ─────────────────> CONNECT credentials ──┘
//! ```
//!
//! Everything is read and parsed once, before the receiver starts, so a
//! missing file, a PEM without a certificate, a key that does not match
//! its certificate or a password file others can read stops startup with
//! the offending key named; it never turns into an endless reconnect loop.
//! A relative file path is the name of a systemd credential, read from
//! `$CREDENTIALS_DIRECTORY` ([`weir_shared::credentials`]).
//! What only the broker can judge (a wrong CA, a wrong password) shows as
//! connection errors, retried with backoff by `publish`.

use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use rumqttc::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rumqttc::tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use weir_shared::config::{MqttConfig, MqttTlsConfig};
use weir_shared::credentials::{self, CredentialError, SecretPath};
use weir_shared::seal::KeyFileError;

/// Why the `[mqtt]` security settings cannot be used. Each names the
/// config key whose file or value is at fault.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The file cannot be read (missing, a directory, no permission).
    #[error("config key `{key}`: cannot read {}: {cause}", path.display())]
    Read {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: io::Error,
    },
    /// A relative path that cannot name a systemd credential.
    #[error("config key `{key}`: {} {cause}", path.display())]
    Credential {
        /// The key naming the file.
        key: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// Why it cannot be resolved.
        cause: CredentialError,
    },
    /// A secret file that group or others may access.
    #[error("config key `{key}`: {} {cause}", path.display())]
    Permissions {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The mode check that failed.
        cause: KeyFileError,
    },
    /// The file is not what the key asks for.
    #[error("config key `{key}`: {}: {reason}", path.display())]
    Content {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the settings (a key that does not match its
    /// certificate, an unsupported key type).
    #[error("config key `{key}`: {cause}")]
    Tls {
        /// The key most likely at fault.
        key: &'static str,
        /// What rustls said.
        cause: rustls::Error,
    },
    /// `server_name` (or `host`, without it) is not a valid TLS name.
    #[error("config key `{key}`: {name:?} is not a DNS name or IP address")]
    ServerName {
        /// `mqtt.tls.server_name` or `mqtt.host`.
        key: &'static str,
        /// The name.
        name: String,
    },
}

/// The loaded security settings of the broker connection.
#[derive(Clone)]
pub struct Security {
    tls: Option<Tls>,
    /// User name and password (MQTT allows a user name alone).
    credentials: Option<(String, Option<Vec<u8>>)>,
}

#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
    client_cert: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .finish_non_exhaustive()
    }
}

/// Where to read the file `key` names: a relative path is a systemd
/// credential (see [`weir_shared::credentials`]).
fn locate(key: &'static str, path: &Path) -> Result<SecretPath, SecurityError> {
    let dir = std::env::var_os(credentials::CREDENTIALS_DIRECTORY).map(PathBuf::from);
    credentials::resolve(path, dir.as_deref()).map_err(|cause| SecurityError::Credential {
        key,
        path: path.to_owned(),
        cause,
    })
}

/// Bytes of a file, the error naming `key`.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(locate(key, path)?.path).map_err(|cause| SecurityError::Read {
        key,
        path: path.to_owned(),
        cause,
    })
}

/// Bytes of a secret file, refused (like PSK files) when group or others
/// may read or write it.
fn read_secret(key: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    let secret = locate(key, path)?;
    let mode = std::fs::metadata(&secret.path)
        .map_err(|cause| SecurityError::Read {
            key,
            path: path.to_owned(),
            cause,
        })?
        .permissions()
        .mode();
    if secret.checked_mode(mode) & 0o077 != 0 {
        return Err(SecurityError::Permissions {
            key,
            path: path.to_owned(),
            cause: KeyFileError::Permissions(mode & 0o777),
        });
    }
    read(key, path)
}

fn content(key: &'static str, path: &Path, reason: &dyn std::fmt::Display) -> SecurityError {
    SecurityError::Content {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(key, path, &e))?;
    if certs.is_empty() {
        return Err(content(key, path, &"no PEM certificate in the file"));
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let pem = read_secret(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => content(key, path, &"no PEM private key in the file"),
        e => content(key, path, &e),
    })
}

/// The password: the file's bytes without one trailing newline.
fn password(path: &Path) -> Result<Vec<u8>, SecurityError> {
    const KEY: &str = "mqtt.password_file";
    let mut pw = read_secret(KEY, path)?;
    if pw.last() == Some(&b'\n') {
        pw.pop();
        if pw.last() == Some(&b'\r') {
            pw.pop();
        }
    }
    if pw.is_empty() {
        return Err(content(KEY, path, &"is empty"));
    }
    if pw.len() > usize::from(u16::MAX) {
        return Err(content(KEY, path, &"is longer than 65535 bytes"));
    }
    Ok(pw)
}

fn client_config(t: &MqttTlsConfig) -> Result<ClientConfig, SecurityError> {
    const CA: &str = "mqtt.tls.ca_file";
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates(CA, &t.ca_file)?);
    if added == 0 {
        return Err(content(
            CA,
            &t.ca_file,
            &format!("none of its {ignored} certificates is usable as a CA"),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|cause| SecurityError::Tls { key: CA, cause })?
        .with_root_certificates(roots);
    match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("mqtt.tls.cert_file", cert)?;
            let key = private_key("mqtt.tls.key_file", key)?;
            // rustls checks here that the key belongs to the certificate.
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|cause| SecurityError::Tls {
                    key: "mqtt.tls.key_file",
                    cause,
                })
        }
        // `validate` refuses one without the other.
        _ => Ok(builder.with_no_client_auth()),
    }
}

impl Security {
    /// Read and check every file `[mqtt]` names. Called at startup (and by
    /// `check-config`); errors name the config key.
    pub fn load(cfg: &MqttConfig) -> Result<Self, SecurityError> {
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| -> Result<Tls, SecurityError> {
                let (key, name) = match &t.server_name {
                    Some(n) => ("mqtt.tls.server_name", n),
                    None => ("mqtt.host", &cfg.host),
                };
                if ServerName::try_from(name.as_str()).is_err() {
                    return Err(SecurityError::ServerName {
                        key,
                        name: name.clone(),
                    });
                }
                Ok(Tls {
                    config: Arc::new(client_config(t)?),
                    server_name: t.server_name.clone(),
                    client_cert: t.cert_file.is_some(),
                })
            })
            .transpose()?;
        let credentials = match (&cfg.username, &cfg.password_file) {
            (Some(user), Some(p)) => Some((user.clone(), Some(password(p)?))),
            (Some(user), None) => Some((user.clone(), None)),
            // `validate` refuses a password without a user name.
            (None, _) => None,
        };
        Ok(Self { tls, credentials })
    }

    /// Client options for `cfg` with these settings: the broker address,
    /// the TLS transport and the credentials. With `server_name` set, TLS
    /// checks the certificate against that name while the socket still
    /// connects to `host`.
    pub fn options(&self, cfg: &MqttConfig) -> MqttOptions {
        let tls_name = self.tls.as_ref().and_then(|t| t.server_name.clone());
        let mut opts = MqttOptions::new(
            cfg.client_id.clone(),
            (tls_name.as_deref().unwrap_or(&cfg.host), cfg.port),
        );
        if tls_name.is_some() {
            // rumqttc dials the name it verifies; dial `host` instead.
            let addr = match cfg.host.parse::<IpAddr>() {
                Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", cfg.port),
                _ => format!("{}:{}", cfg.host, cfg.port),
            };
            opts.set_socket_connector(move |_name, network| {
                rumqttc::default_socket_connect(addr.clone(), network)
            });
        }
        if let Some(t) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                t.config.clone(),
            )));
        }
        match &self.credentials {
            Some((user, Some(pw))) => {
                opts.set_credentials(user.clone(), pw.clone());
            }
            Some((user, None)) => {
                opts.set_username(user.clone());
            }
            None => {}
        }
        opts
    }

    /// One startup line saying how the broker connection is secured.
    pub fn log(&self, cfg: &MqttConfig) {
        let user = self.credentials.as_ref().map(|c| c.0.as_str());
        match &self.tls {
            Some(t) => tracing::info!(
                server_name = t.server_name.as_deref().unwrap_or(&cfg.host),
                client_cert = t.client_cert,
                username = user,
                "MQTT over TLS."
            ),
            None if self.credentials.as_ref().is_some_and(|c| c.1.is_some()) => {
                tracing::warn!(
                    username = user,
                    "MQTT password sent without TLS: configure [mqtt.tls] unless the broker is on this host."
                );
            }
            None => tracing::info!(username = user, "MQTT over plain TCP."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqtt(host: &str) -> MqttConfig {
        serde_json::from_value(serde_json::json!({"host": host})).expect("mqtt config")
    }

    fn write(dir: &Path, name: &str, text: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn password_file_is_private_and_trimmed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = mqtt("h");
        m.username = Some("weir".into());
        m.password_file = Some(write(dir.path(), "pw", b"s3cret\r\n", 0o600));
        let s = Security::load(&m).expect("loads");
        assert_eq!(
            s.credentials,
            Some(("weir".into(), Some(b"s3cret".to_vec())))
        );
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
        m.password_file = Some(write(dir.path(), "pw2", b"a b\n\n", 0o400));
        let s = Security::load(&m).expect("loads");
        assert_eq!(s.credentials.and_then(|c| c.1), Some(b"a b\n".to_vec()));

        m.password_file = Some(write(dir.path(), "open", b"x\n", 0o640));
        let e = Security::load(&m).expect_err("0640 refused");
        assert!(matches!(
            e,
            SecurityError::Permissions {
                key: "mqtt.password_file",
                ..
            }
        ));
        let text = e.to_string();
        assert!(
            text.contains("mqtt.password_file") && text.contains("chmod 600"),
            "{text}"
        );
        m.password_file = Some(write(dir.path(), "empty", b"\n", 0o600));
        assert!(matches!(
            Security::load(&m),
            Err(SecurityError::Content {
                key: "mqtt.password_file",
                ..
            })
        ));
        m.password_file = Some(dir.path().join("missing"));
        let e = Security::load(&m).expect_err("missing");
        assert!(e.to_string().contains("mqtt.password_file"), "{e}");
    }

    #[test]
    fn tls_files_are_checked_by_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = mqtt("127.0.0.1");
        let tls = |ca: PathBuf| MqttTlsConfig {
            ca_file: ca,
            cert_file: None,
            key_file: None,
            server_name: None,
        };
        m.tls = Some(tls(dir.path().join("nope.pem")));
        assert!(matches!(
            Security::load(&m),
            Err(SecurityError::Read {
                key: "mqtt.tls.ca_file",
                ..
            })
        ));
        m.tls = Some(tls(write(dir.path(), "ca.pem", b"not pem\n", 0o644)));
        let e = Security::load(&m).expect_err("no certificate");
        assert!(
            e.to_string().contains("mqtt.tls.ca_file") && e.to_string().contains("no PEM"),
            "{e}"
        );
        let mut t = tls(dir.path().join("nope.pem"));
        t.server_name = Some("not a name".into());
        m.tls = Some(t);
        assert!(matches!(
            Security::load(&m),
            Err(SecurityError::ServerName {
                key: "mqtt.tls.server_name",
                ..
            })
        ));
    }

    #[test]
    fn plain_options_have_no_tls_and_no_credentials() {
        let m = mqtt("broker.local");
        let s = Security::load(&m).expect("nothing to load");
        let o = s.options(&m);
        assert!(matches!(o.transport(), Transport::Tcp));
        assert_eq!(o.broker().tcp_address(), Some(("broker.local", 1883)));
        assert!(!o.has_socket_connector());
    }
}
