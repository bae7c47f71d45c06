//! [`TlsConfigError`]: a TLS setting that cannot be used, naming the setting and its value.

/// A certificate, key, name or CA that cannot be used. The message names the setting and the
/// value (a file path, a server name), never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLS {field} {value:?}: {reason}")]
pub struct TlsConfigError {
    field: &'static str,
    value: String,
    reason: String,
}

impl TlsConfigError {
    pub(crate) fn invalid(field: &'static str, value: &str, reason: String) -> Self {
        TlsConfigError {
            field,
            value: value.to_owned(),
            reason,
        }
    }

    /// Which setting was refused (`"certificate"`, `"private key"`, `"server name"`, …).
    pub fn field(&self) -> &str {
        self.field
    }

    /// The refused value: a file path, a server name, or `<pem>` for PEM text.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl From<TlsConfigError> for std::io::Error {
    fn from(e: TlsConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}
