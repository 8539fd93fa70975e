//! The `[proxy.tls]` and `[backend.tls]` sections, and turning their files into rustls
//! configurations (PEM certificates and keys, CA bundles), with errors naming the key and
//! the file at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[proxy.tls]`: TLS for clients on `proxy.tls_listen`. The files are read again on every
/// reload, so a rotated certificate is picked up without a restart (new connections only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA bundle (PEM) client certificates are verified against; unset: no client
    /// certificates asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse clients without a valid certificate (`true`), or accept
    /// them but still refuse an invalid one (`false`).
    pub require_client_cert: bool,
    /// Time a client has from its TCP connect to the end of the TLS handshake; past it the
    /// connection is closed and its source struck (a silent or slow handshake ties up a
    /// slot and, done in numbers, CPU).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Handshakes in progress per worker; a connection admitted beyond it is closed at
    /// once (`moat_tls_handshakes_total{outcome="busy"}`). Bounds the CPU a flood of
    /// handshakes can take from the clients already served.
    pub max_handshakes: usize,
}

impl Default for ClientTlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: None,
            require_client_cert: true,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
        }
    }
}

/// `[backend.tls]`: TLS to Redis, for the shared pool, the pinned pool and the connections
/// that check credentials. Present: on. Changes need a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendTlsConfig {
    /// CA bundle (PEM) Redis's certificate is verified against (required unless
    /// `insecure_skip_verify`; a system bundle such as
    /// `/etc/ssl/certs/ca-certificates.crt` for a public CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain moat presents (Redis's `tls-auth-clients yes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name checked against Redis's certificate and sent as SNI (an IP address is checked
    /// against the certificate's IP addresses and not sent); unset: `backend.address`'s IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate Redis shows. Only for tests: anyone on the path can then read
    /// and change the traffic. Logged as a warning at start.
    pub insecure_skip_verify: bool,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The ring provider: already built in the workspace (ureq), quick to compile, no cmake.
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange (aws-lc-rs has it, at
/// the price of a C build); the classical groups are what Redis 7.0 clients offer anyway.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        invalid(
            key,
            format!("cannot read a private key from {}: {e}", path.display()),
        )
    })
}

fn read_roots(key: &str, path: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(read_certs(key, path)?);
    if added == 0 {
        return Err(invalid(
            key,
            format!(
                "{} holds no usable CA certificate ({ignored} ignored)",
                path.display()
            ),
        ));
    }
    Ok(roots)
}

impl ClientTlsConfig {
    /// Checks the values without reading the files (`Config::validate`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            return Err(invalid(
                "proxy.tls",
                "cert_file and key_file are both required",
            ));
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "proxy.tls.handshake_timeout",
                "must be between 1ms and 5 minutes",
            ));
        }
        if self.max_handshakes == 0 {
            return Err(invalid("proxy.tls.max_handshakes", "must be positive"));
        }
        Ok(())
    }

    /// Reads the files into a server configuration (at start and on every reload).
    pub(crate) fn load(&self) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        self.validate()?;
        let certs = read_certs("proxy.tls.cert_file", &self.cert_file)?;
        let key = read_key("proxy.tls.key_file", &self.key_file)?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("proxy.tls", e.to_string()))?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = read_roots("proxy.tls.client_ca_file", path)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let verifier = if self.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| invalid("proxy.tls.client_ca_file", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            invalid(
                "proxy.tls.key_file",
                format!("does not match proxy.tls.cert_file or is unusable: {e}"),
            )
        })?;
        Ok(Arc::new(config))
    }
}

impl BackendTlsConfig {
    /// Checks the values without reading the files (`Config::validate`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.ca_file.is_none() && !self.insecure_skip_verify {
            return Err(invalid(
                "backend.tls.ca_file",
                "required to verify Redis's certificate (or set insecure_skip_verify = true, \
                 for tests only)",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid("backend.tls", "cert_file and key_file go together"));
        }
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.as_str()).is_err()
        {
            return Err(invalid(
                "backend.tls.server_name",
                format!("{name:?} is neither a DNS name nor an IP address"),
            ));
        }
        Ok(())
    }

    /// Reads the files into a client configuration and the name to verify (at start).
    pub(crate) fn load(
        &self,
        address: std::net::SocketAddr,
    ) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ConfigError> {
        self.validate()?;
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("backend.tls", e.to_string()))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(super::verify::AnyCertificate(provider)))
        } else {
            let path = self.ca_file.as_deref().unwrap_or(Path::new(""));
            builder.with_root_certificates(read_roots("backend.tls.ca_file", path)?)
        };
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    read_certs("backend.tls.cert_file", cert)?,
                    read_key("backend.tls.key_file", key)?,
                )
                .map_err(|e| {
                    invalid(
                        "backend.tls.key_file",
                        format!("does not match backend.tls.cert_file or is unusable: {e}"),
                    )
                })?,
            _ => builder.with_no_client_auth(),
        };
        let name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| invalid("backend.tls.server_name", e.to_string()))?,
            None => ServerName::IpAddress(address.ip().into()),
        };
        Ok((Arc::new(config), name))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// The commented `key = value` and `[section]` lines of the example from the line
    /// starting with `from` to the next uncommented line, uncommented.
    fn uncommented(from: &str) -> String {
        include_str!("../../../../moat.example.toml")
            .lines()
            .skip_while(|l| !l.starts_with(from))
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_examples_tls_blocks_are_valid_once_uncommented() {
        let text = format!(
            "[proxy]\n{}{}",
            uncommented("# tls_listen"),
            uncommented("# [backend.tls]")
        );
        let c = Config::from_toml(&text).expect("uncommented TLS blocks are valid");
        let tls = c.proxy.tls.expect("[proxy.tls]");
        assert_eq!(c.proxy.tls_listen.map(|a| a.port()), Some(6381));
        let d = super::ClientTlsConfig::default();
        assert_eq!(tls.handshake_timeout, d.handshake_timeout);
        assert_eq!(tls.max_handshakes, d.max_handshakes);
        assert_eq!(tls.require_client_cert, d.require_client_cert);
        let b = c.backend.tls.expect("[backend.tls]");
        assert!(!b.insecure_skip_verify);
        assert_eq!(b.server_name.as_deref(), Some("redis.internal"));
    }

    #[test]
    fn bad_tls_settings_are_refused_naming_the_key() {
        for (text, key) in [
            (
                "[proxy]\ntls_listen = \"127.0.0.1:6381\"\n",
                "proxy.tls_listen",
            ),
            ("[proxy.tls]\ncert_file = \"a\"\n", "proxy.tls"),
            (
                "[proxy.tls]\ncert_file = \"a\"\nkey_file = \"b\"\nmax_handshakes = 0\n",
                "proxy.tls.max_handshakes",
            ),
            (
                "[proxy.tls]\ncert_file = \"a\"\nkey_file = \"b\"\nhandshake_timeout = \"0s\"\n",
                "proxy.tls.handshake_timeout",
            ),
            ("[backend.tls]\n", "backend.tls.ca_file"),
            (
                "[backend.tls]\nca_file = \"a\"\ncert_file = \"b\"\n",
                "backend.tls",
            ),
            (
                "[backend.tls]\nca_file = \"a\"\nserver_name = \"not a name!\"\n",
                "backend.tls.server_name",
            ),
        ] {
            let err = Config::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn files_that_do_not_load_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not PEM at all\n").expect("write");
        let tls = super::ClientTlsConfig {
            cert_file: dir.path().join("missing.crt"),
            key_file: empty.clone(),
            ..Default::default()
        };
        let err = tls.load().expect_err("missing file").to_string();
        assert!(
            err.contains("proxy.tls.cert_file") && err.contains("missing.crt"),
            "{err}"
        );
        let backend = super::BackendTlsConfig {
            ca_file: Some(empty),
            ..Default::default()
        };
        let err = backend
            .load(std::net::SocketAddr::from(([127, 0, 0, 1], 6379)))
            .expect_err("no CA")
            .to_string();
        assert!(
            err.contains("backend.tls.ca_file") && err.contains("empty.pem"),
            "{err}"
        );
    }
}
