//! [`TlsInfo`]: what a TLS client said in its handshake (SNI, its certificate), for layers and
//! services to read.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::{SslDigest, TlsRef};

/// The TLS facts of one downstream connection: the server name the client asked for and,
/// with [`ClientAuth`](super::ClientAuth), the certificate it presented (already verified
/// against the configured CA).
///
/// In the proxy, any layer reads it from the Pingora session with
/// [`TlsInfo::of_session`]; [`ServeTower`](crate::ServeTower) inserts it into the extensions
/// of every request that came over TLS. Cloning is cheap (one reference count).
#[derive(Debug, Clone)]
pub struct TlsInfo(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    server_name: Option<String>,
    client: Option<ClientCert>,
}

/// The certificate a client authenticated with.
#[derive(Debug)]
pub struct ClientCert {
    subject: String,
    der: Vec<u8>,
}

impl ClientCert {
    /// The subject's distinguished name, RFC 4514 style (`CN=alice, O=Example`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The whole leaf certificate, DER encoded, for checks of your own.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

impl TlsInfo {
    fn capture(tls: &TlsRef) -> Self {
        let client = tls.peer_certificate_der().map(|der| ClientCert {
            subject: x509_parser::parse_x509_certificate(der)
                .map(|(_, cert)| cert.subject().to_string())
                .unwrap_or_default(),
            der: der.to_vec(),
        });
        TlsInfo(Arc::new(Inner {
            server_name: tls.server_name().map(str::to_owned),
            client,
        }))
    }

    /// The SNI name the client sent, if any.
    pub fn server_name(&self) -> Option<&str> {
        self.0.server_name.as_deref()
    }

    /// The client's verified certificate, when it sent one.
    pub fn client_cert(&self) -> Option<&ClientCert> {
        self.0.client.as_ref()
    }

    /// Shorthand for the client certificate's subject.
    pub fn client_subject(&self) -> Option<&str> {
        self.client_cert().map(ClientCert::subject)
    }

    /// The info of a connection's TLS digest (`None` on a listener not configured by
    /// [`TlsConfig`](super::TlsConfig)).
    pub fn from_digest(digest: &SslDigest) -> Option<&TlsInfo> {
        digest.extension.get::<TlsInfo>()
    }

    /// The info of the connection a proxied request came on (`None` over plain TCP).
    pub fn of_session(session: &pingora_proxy::Session) -> Option<&TlsInfo> {
        let ssl = session.digest()?.ssl_digest.as_ref()?;
        Self::from_digest(ssl)
    }
}

/// Pingora's post-handshake hook: records a [`TlsInfo`] in the connection's TLS digest.
pub(crate) struct CaptureTlsInfo;

#[async_trait]
impl TlsAccept for CaptureTlsInfo {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(TlsInfo::capture(tls)))
    }
}
