//! [`TlsConfig`]: how a listener terminates TLS (certificates by SNI, ALPN, client
//! certificates), turned into Pingora's rustls `TlsSettings` for each accept loop.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::{Acceptor, TlsSettings};
use pingora_core::protocols::ALPN;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::cert::{parse_certs, read};
use super::error::TlsConfigError;
use super::info::CaptureTlsInfo;
use super::reload::TlsReloader;
use super::resolver::{CertSet, SniResolver};

/// TLS termination for a listener: rustls through Pingora, TLS 1.2 and 1.3 only, the
/// certificate chosen by SNI from a [`CertSet`] (swappable at run time through
/// [`reloader`](Self::reloader)), ALPN offering `h2` then `http/1.1`, and optionally client
/// certificates ([`ClientAuth`]).
///
/// Give it to [`ProxyBuilder::tls`](crate::proxy::ProxyBuilder::tls) or
/// [`ListenOptions::tls`](crate::server::ListenOptions::tls). Clones share the certificates: a reload
/// through one is seen by every listener built from any clone.
#[derive(Clone)]
pub struct TlsConfig {
    resolver: Arc<SniResolver>,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
    http2: bool,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("certs", &self.resolver.set.load())
            .field("client_auth", &self.client_auth.is_some())
            .field("http2", &self.http2)
            .finish()
    }
}

impl TlsConfig {
    /// Terminates TLS with these certificates, offering HTTP/2 and HTTP/1.1, without client
    /// certificates.
    pub fn new(certs: CertSet) -> Self {
        TlsConfig {
            resolver: Arc::new(SniResolver {
                set: ArcSwap::from_pointee(certs),
            }),
            client_auth: None,
            http2: true,
        }
    }

    /// `true` (default): ALPN offers `h2` before `http/1.1`. `false`: `http/1.1` only.
    pub fn http2(mut self, enabled: bool) -> Self {
        self.http2 = enabled;
        self
    }

    /// Asks clients for a certificate, verified against the CA of `auth`.
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = Some(auth.verifier);
        self
    }

    /// A handle that swaps the certificates of every listener using this configuration.
    pub fn reloader(&self) -> TlsReloader {
        TlsReloader::new(self.resolver.clone())
    }

    /// Pingora's rustls acceptor for these settings; the connection harness drives its
    /// handshakes (under the client limits).
    pub(crate) fn acceptor(&self) -> std::io::Result<Arc<Acceptor>> {
        // `build` panics only without a certificate resolver, and one is always set.
        Ok(Arc::new(self.settings()?.build()))
    }

    /// Pingora's settings for one listening endpoint.
    pub(crate) fn settings(&self) -> std::io::Result<TlsSettings> {
        let mut settings = TlsSettings::with_callbacks(Box::new(CaptureTlsInfo))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        settings.set_cert_resolver(self.resolver.clone());
        if let Some(verifier) = &self.client_auth {
            settings.set_client_cert_verifier(verifier.clone());
        }
        settings.set_alpn(if self.http2 { ALPN::H2H1 } else { ALPN::H1 });
        Ok(settings)
    }
}

/// Client certificate verification for a TLS listener: certificates must chain to the given
/// CA(s). [`TlsInfo`](super::TlsInfo) carries the verified client's subject to layers and
/// services.
#[derive(Clone)]
pub struct ClientAuth {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth").finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// Every client must present a certificate issued by a CA in `ca_pem`; the handshake
    /// fails otherwise.
    ///
    /// # Errors
    /// No usable CA certificate in `ca_pem`.
    pub fn required(ca_pem: &[u8]) -> Result<Self, TlsConfigError> {
        Self::build(ca_pem, "<pem>", true)
    }

    /// A client may present a certificate (then it must chain to `ca_pem`) or none; layers
    /// tell the two apart through [`TlsInfo::client_cert`](super::TlsInfo::client_cert).
    ///
    /// # Errors
    /// No usable CA certificate in `ca_pem`.
    pub fn optional(ca_pem: &[u8]) -> Result<Self, TlsConfigError> {
        Self::build(ca_pem, "<pem>", false)
    }

    /// [`required`](Self::required) with the CA read from a PEM file.
    ///
    /// # Errors
    /// The file cannot be read or holds no usable CA certificate.
    pub fn required_file(ca: impl AsRef<Path>) -> Result<Self, TlsConfigError> {
        let ca = ca.as_ref();
        Self::build(&read(ca)?, &ca.display().to_string(), true)
    }

    fn build(ca_pem: &[u8], name: &str, required: bool) -> Result<Self, TlsConfigError> {
        let roots = root_store(ca_pem, name)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let builder = if required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let verifier = builder
            .build()
            .map_err(|e| TlsConfigError::invalid("client CA", name, format!("unusable: {e}")))?;
        Ok(ClientAuth { verifier })
    }
}

/// A root store of every certificate in `pem`.
pub(crate) fn root_store(pem: &[u8], name: &str) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem, name)? {
        roots
            .add(cert)
            .map_err(|e| TlsConfigError::invalid("CA certificate", name, format!("{e}")))?;
    }
    Ok(roots)
}
