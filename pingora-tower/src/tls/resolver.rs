//! [`CertSet`]: the certificates a listener serves, chosen by SNI, and the resolver rustls asks
//! during each handshake.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::cert::ServerCert;
use super::error::TlsConfigError;

/// The certificates of one TLS listener: a default, plus certificates for exact server names
/// (`api.example.com`) and wildcard names (`*.example.com`).
///
/// # Which certificate a handshake gets
/// 1. the certificate of the exact name the client sent in SNI (names compare
///    case-insensitively, a trailing dot ignored);
/// 2. else the wildcard whose suffix is the SNI name minus its first label: `*.example.com`
///    covers `a.example.com`, neither `example.com` nor `a.b.example.com` (RFC 6125 §6.4.3);
/// 3. else, and for a client sending no SNI (an IP address), the default certificate.
#[derive(Debug, Clone)]
pub struct CertSet {
    default: ServerCert,
    exact: HashMap<String, ServerCert>,
    /// By suffix: `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, ServerCert>,
}

impl CertSet {
    /// A set serving `default` to every client until names are added.
    pub fn new(default: ServerCert) -> Self {
        CertSet {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }

    /// Serves `cert` for `name`: a DNS name (`api.example.com`) or a wildcard
    /// (`*.example.com`). A name given twice keeps the last certificate.
    ///
    /// # Errors
    /// `name` is not a DNS name or a `*.` wildcard of one.
    pub fn with_name(mut self, name: &str, cert: ServerCert) -> Result<Self, TlsConfigError> {
        let normal = normalize(name);
        match normal.strip_prefix("*.") {
            Some(suffix) => {
                check_dns_name(suffix, name)?;
                self.wildcard.insert(suffix.to_owned(), cert);
            }
            None => {
                check_dns_name(&normal, name)?;
                self.exact.insert(normal, cert);
            }
        }
        Ok(self)
    }

    /// The certificate a client sending `sni` gets (see the type's docs).
    pub fn select(&self, sni: Option<&str>) -> &ServerCert {
        let Some(sni) = sni else {
            return &self.default;
        };
        let sni = normalize(sni);
        if let Some(cert) = self.exact.get(&sni) {
            return cert;
        }
        sni.split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix))
            .unwrap_or(&self.default)
    }

    /// The same set with every file-based certificate read again.
    pub(crate) fn reread(&self) -> Result<CertSet, TlsConfigError> {
        let reread_all = |map: &HashMap<String, ServerCert>| {
            map.iter()
                .map(|(name, cert)| Ok((name.clone(), cert.reread()?)))
                .collect::<Result<HashMap<_, _>, TlsConfigError>>()
        };
        Ok(CertSet {
            default: self.default.reread()?,
            exact: reread_all(&self.exact)?,
            wildcard: reread_all(&self.wildcard)?,
        })
    }

    /// Every certificate of the set.
    pub(crate) fn certs(&self) -> impl Iterator<Item = &ServerCert> {
        std::iter::once(&self.default)
            .chain(self.exact.values())
            .chain(self.wildcard.values())
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Letters, digits and `-` in non-empty labels of at most 63 bytes, 253 bytes in all.
fn check_dns_name(name: &str, given: &str) -> Result<(), TlsConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(TlsConfigError::invalid(
            "server name",
            given,
            "expected a DNS name or a `*.` wildcard of one".into(),
        ))
    }
}

/// Answers rustls with the certificate [`CertSet::select`] picks from the current set, which
/// [`TlsReloader`](super::TlsReloader) swaps without touching open connections.
#[derive(Debug)]
pub(crate) struct SniResolver {
    pub(crate) set: ArcSwap<CertSet>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().select(hello.server_name()).key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> ServerCert {
        let key = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("rcgen");
        ServerCert::from_pem(
            key.cert.pem().as_bytes(),
            key.signing_key.serialize_pem().as_bytes(),
        )
        .expect("valid pair")
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let (a, w, d) = (
            cert("a.example.com"),
            cert("*.example.com"),
            cert("default"),
        );
        let set = CertSet::new(d.clone())
            .with_name("A.example.com.", a.clone())
            .and_then(|s| s.with_name("*.example.com", w.clone()))
            .expect("valid names");
        assert_eq!(set.select(Some("a.example.com")).leaf_der(), a.leaf_der());
        assert_eq!(set.select(Some("a.EXAMPLE.com")).leaf_der(), a.leaf_der());
        assert_eq!(set.select(Some("b.example.com")).leaf_der(), w.leaf_der());
        assert_eq!(set.select(Some("x.b.example.com")).leaf_der(), d.leaf_der());
        assert_eq!(set.select(Some("example.com")).leaf_der(), d.leaf_der());
        assert_eq!(set.select(None).leaf_der(), d.leaf_der());
    }

    #[test]
    fn refuses_names_that_are_not_dns_names() {
        for bad in ["", "*.", "a..b", "*.*.a", "a b", "-a.com", "a*.com"] {
            let err = CertSet::new(cert("d"))
                .with_name(bad, cert("d"))
                .unwrap_err();
            assert_eq!(err.field(), "server name");
            assert_eq!(err.value(), bad);
        }
    }
}
