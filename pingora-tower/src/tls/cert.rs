//! A server certificate chain and its private key, read from PEM bytes or files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::error::TlsConfigError;

/// A certificate chain (leaf first) and the private key that goes with it, checked to match.
///
/// Made from PEM text ([`from_pem`](Self::from_pem)) or PEM files
/// ([`from_pem_files`](Self::from_pem_files)); a certificate read from files remembers its
/// paths so that [`TlsReloader::reload_files`](super::TlsReloader::reload_files) can read them
/// again.
#[derive(Clone)]
pub struct ServerCert {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) files: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("ServerCert")
            .field("chain_len", &self.key.cert.len())
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// A certificate chain and key from PEM text: `chain` holds one or more `CERTIFICATE`
    /// blocks (leaf first), `key` one PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    ///
    /// # Errors
    /// No certificate or no key in the text, a key rustls cannot use, or a key that does not
    /// belong to the leaf certificate.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, TlsConfigError> {
        Self::build(chain, key, "<pem>", "<pem>", None)
    }

    /// A certificate chain and key from two PEM files (they may be the same file).
    ///
    /// # Errors
    /// A file cannot be read, or as [`from_pem`](Self::from_pem), naming the file.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let chain_pem = read(chain)?;
        let key_pem = read(key)?;
        Self::build(
            &chain_pem,
            &key_pem,
            &chain.display().to_string(),
            &key.display().to_string(),
            Some((chain.to_owned(), key.to_owned())),
        )
    }

    /// The leaf certificate, DER encoded.
    pub fn leaf_der(&self) -> &[u8] {
        self.key.cert.first().map_or(&[], |c| c.as_ref())
    }

    /// Reads the same files again (a certificate made from PEM text is returned unchanged).
    pub(crate) fn reread(&self) -> Result<Self, TlsConfigError> {
        match &self.files {
            Some((chain, key)) => Self::from_pem_files(chain, key),
            None => Ok(self.clone()),
        }
    }

    fn build(
        chain_pem: &[u8],
        key_pem: &[u8],
        chain_name: &str,
        key_name: &str,
        files: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, TlsConfigError> {
        let chain = parse_certs(chain_pem, chain_name)?;
        let key = parse_key(key_pem, key_name)?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            TlsConfigError::invalid(
                "certificate key",
                key_name,
                format!("does not fit the certificate in {chain_name}: {e}"),
            )
        })?;
        Ok(ServerCert {
            key: Arc::new(key),
            files,
        })
    }
}

/// Reads a whole PEM file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|e| {
        TlsConfigError::invalid(
            "file",
            &path.display().to_string(),
            format!("unreadable: {e}"),
        )
    })
}

/// Every `CERTIFICATE` block of `pem`; at least one.
pub(crate) fn parse_certs(
    pem: &[u8],
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::invalid("certificate", name, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsConfigError::invalid(
            "certificate",
            name,
            "no CERTIFICATE block found".into(),
        ));
    }
    Ok(certs)
}

/// The first private key of `pem`.
pub(crate) fn parse_key(pem: &[u8], name: &str) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsConfigError::invalid(
            "private key",
            name,
            "no PRIVATE KEY block found".into(),
        )),
        Err(e) => Err(TlsConfigError::invalid(
            "private key",
            name,
            format!("bad PEM: {e}"),
        )),
    }
}
