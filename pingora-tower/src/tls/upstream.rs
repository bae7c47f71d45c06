//! [`UpstreamTls`]: how the proxy checks an `https://` backend and who it says it is.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use super::cert::{parse_certs, parse_key, read};
use super::error::TlsConfigError;

/// TLS towards the backends of one [`Upstream`](crate::proxy::Upstream) with `https://` URLs.
///
/// Without it (or with `UpstreamTls::new()`), a backend's certificate must chain to the
/// system's roots and name the URL's host, which is also the SNI. A handshake that fails is
/// the backend's failure: the request gets `502` (or fails over to another backend), the
/// circuit breaker counts it, and nothing is ever sent in plaintext instead.
///
/// Each distinct setting (CA, client identity, verification) gets its own connection pool:
/// a connection opened for one identity is never reused for another.
///
/// # Example
/// ```no_run
/// use pingora_tower::proxy::Upstream;
/// use pingora_tower::tls::UpstreamTls;
///
/// let upstream = Upstream::new("https://10.0.0.5:8443").tls(
///     UpstreamTls::new()
///         .ca_file("/etc/proxy/internal-ca.pem")
///         .sni("api.internal")
///         .client_cert_files("/etc/proxy/client.pem", "/etc/proxy/client.key"),
/// );
/// # let _ = upstream;
/// ```
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    ca: Option<Pem>,
    sni: Option<String>,
    client: Option<(Pem, Pem)>,
    insecure: bool,
}

/// PEM text given inline or by path (read at build time).
#[derive(Debug, Clone)]
enum Pem {
    Text(Vec<u8>),
    File(PathBuf),
}

impl Pem {
    fn load(&self) -> Result<(Vec<u8>, String), TlsConfigError> {
        match self {
            Pem::Text(pem) => Ok((pem.clone(), "<pem>".to_owned())),
            Pem::File(path) => Ok((read(path)?, path.display().to_string())),
        }
    }
}

impl UpstreamTls {
    /// Verification against the system roots, SNI from the URL, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts only the CA certificates in `pem` (instead of the system roots).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Text(pem.into()));
        self
    }

    /// [`ca_pem`](Self::ca_pem) read from a file when the proxy is built.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca = Some(Pem::File(path.as_ref().to_owned()));
        self
    }

    /// Sends `name` as SNI and expects the certificate to be valid for it (instead of the
    /// URL's host): for backends addressed by IP, or behind a name of their own.
    pub fn sni(mut self, name: impl Into<String>) -> Self {
        self.sni = Some(name.into());
        self
    }

    /// Presents this certificate chain (leaf first) and key to backends that ask for one
    /// (mutual TLS).
    pub fn client_cert_pem(mut self, chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((Pem::Text(chain.into()), Pem::Text(key.into())));
        self
    }

    /// [`client_cert_pem`](Self::client_cert_pem) read from files when the proxy is built.
    pub fn client_cert_files(mut self, chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.client = Some((
            Pem::File(chain.as_ref().to_owned()),
            Pem::File(key.as_ref().to_owned()),
        ));
        self
    }

    /// Accepts any certificate, expired, self-signed or for another name: the connection is
    /// encrypted but the backend is not authenticated, so anyone on the path can read and
    /// change the traffic. For tests and migrations only.
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// Loads and checks everything, for `url`'s backends.
    pub(crate) fn compile(&self) -> Result<PeerTls, TlsConfigError> {
        let mut identity = std::hash::DefaultHasher::new();
        self.insecure.hash(&mut identity);
        let ca = match &self.ca {
            None => None,
            Some(pem) => {
                let (pem, name) = pem.load()?;
                let certs = parse_certs(&pem, &name)?;
                // The roots must be usable by rustls, and parse for Pingora.
                super::config::root_store(&pem, &name)?;
                for cert in &certs {
                    check_x509(cert, "CA certificate", &name)?;
                    cert.as_ref().hash(&mut identity);
                }
                let wrapped: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                    .collect();
                Some(Arc::<[WrappedX509]>::from(wrapped))
            }
        };
        let client = match &self.client {
            None => None,
            Some((chain, key)) => {
                let (chain_pem, chain_name) = chain.load()?;
                let (key_pem, key_name) = key.load()?;
                let certs = parse_certs(&chain_pem, &chain_name)?;
                for cert in &certs {
                    check_x509(cert, "client certificate", &chain_name)?;
                }
                let key = parse_key(&key_pem, &key_name)?;
                let provider = rustls::crypto::ring::default_provider();
                CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(|e| {
                    TlsConfigError::invalid(
                        "client key",
                        &key_name,
                        format!("does not fit the certificate in {chain_name}: {e}"),
                    )
                })?;
                let chain: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
                chain.hash(&mut identity);
                key.secret_der().hash(&mut identity);
                Some(Arc::new(CertKey::new(chain, key.secret_der().to_vec())))
            }
        };
        let sni = match &self.sni {
            Some(name) if name.is_empty() => {
                return Err(TlsConfigError::invalid(
                    "upstream SNI",
                    name,
                    "must not be empty (an empty SNI turns verification off in Pingora)".into(),
                ))
            }
            Some(name) => Some(name.to_ascii_lowercase()),
            None => None,
        };
        Ok(PeerTls {
            ca,
            client,
            sni,
            insecure: self.insecure,
            group_key: identity.finish(),
        })
    }
}

/// Pingora would panic on a certificate it cannot parse; refuse it at build time instead.
fn check_x509(
    cert: &CertificateDer<'_>,
    field: &'static str,
    name: &str,
) -> Result<(), TlsConfigError> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|_| ())
        .map_err(|e| {
            TlsConfigError::invalid(field, name, format!("not a valid X.509 certificate: {e}"))
        })
}

/// [`UpstreamTls`] loaded: what each `HttpPeer` of the upstream gets.
pub(crate) struct PeerTls {
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    sni: Option<String>,
    insecure: bool,
    /// Distinguishes the pool of this identity: Pingora's peer hash covers neither the CA nor
    /// more of a client certificate than its serial number.
    group_key: u64,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("custom_ca", &self.ca.is_some())
            .field("client_cert", &self.client.is_some())
            .field("sni", &self.sni)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl PeerTls {
    /// The SNI (and expected certificate name) to use instead of the URL's host.
    pub(crate) fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Sets the peer's CA, client identity, verification and pool key (the SNI override is
    /// already the backend's SNI).
    pub(crate) fn apply(&self, peer: &mut HttpPeer) {
        self.apply_options(&mut peer.options);
        peer.client_cert_key.clone_from(&self.client);
        peer.group_key = self.group_key;
    }

    /// The CA and verification alone (for peers that carry no client certificate).
    pub(crate) fn apply_options(&self, options: &mut PeerOptions) {
        options.ca.clone_from(&self.ca);
        if self.insecure {
            options.verify_cert = false;
            options.verify_hostname = false;
        }
    }
}
