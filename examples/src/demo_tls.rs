//! The demo's TLS listener (`--tls` / `DEMO_TLS=1`): a self-signed certificate for
//! `localhost` and `127.0.0.1`, made at start-up with `rcgen`. Its key never leaves the
//! process; the certificate is written to a temporary file so `curl --cacert` and
//! `openssl s_client -CAfile` can check it.

use std::path::{Path, PathBuf};

use pingora_tower::tls::{CertSet, ServerCert, TlsConfig};

use crate::demo::DemoError;

/// The name the demo's certificate is for (and the SNI the printed commands send).
pub const DEMO_TLS_NAME: &str = "localhost";

/// A fresh self-signed certificate and the TLS configuration serving it.
#[derive(Debug)]
pub struct DemoCert {
    cert_path: PathBuf,
    tls: TlsConfig,
}

impl DemoCert {
    /// Makes the certificate and writes it (not the key) under the system temp directory.
    ///
    /// # Errors
    /// The certificate cannot be made or the file cannot be written.
    pub fn generate() -> Result<Self, DemoError> {
        let key = rcgen::generate_simple_self_signed(vec![
            DEMO_TLS_NAME.to_owned(),
            "127.0.0.1".to_owned(),
        ])?;
        let cert_pem = key.cert.pem();
        let dir = std::env::temp_dir().join(format!("pingora-tower-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cert_path = dir.join("demo-cert.pem");
        std::fs::write(&cert_path, &cert_pem)?;
        let cert = ServerCert::from_pem(
            cert_pem.as_bytes(),
            key.signing_key.serialize_pem().as_bytes(),
        )?;
        Ok(DemoCert {
            cert_path,
            tls: TlsConfig::new(CertSet::new(cert)),
        })
    }

    /// The certificate file (PEM) clients should trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The listener's TLS configuration.
    pub fn tls(&self) -> TlsConfig {
        self.tls.clone()
    }

    /// Removes the certificate file and its directory.
    pub fn remove_file(&self) {
        if let Some(dir) = self.cert_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
