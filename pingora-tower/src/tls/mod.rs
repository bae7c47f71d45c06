//! TLS at both ends, on rustls through Pingora (TLS 1.2 and 1.3; never OpenSSL).
//!
//! - **Downstream**: a [`TlsConfig`] terminates TLS on a listener
//!   ([`ProxyBuilder::tls`](crate::proxy::ProxyBuilder::tls),
//!   [`ListenOptions::tls`](crate::server::ListenOptions::tls)): certificates chosen by SNI from a
//!   [`CertSet`] (exact names, `*.` wildcards, a default), ALPN `h2` and `http/1.1`, optional
//!   client certificates ([`ClientAuth`]), and [`TlsReloader`] to swap certificates without
//!   dropping a connection (by call, file watch or signal). [`TlsInfo`] tells layers and
//!   services the SNI name and the client's subject.
//! - **Upstream**: [`UpstreamTls`] on an [`Upstream`](crate::proxy::Upstream) with `https://`
//!   URLs: verification on by default (system roots or a given CA), SNI override, a client
//!   certificate for mutual TLS, and an explicitly named insecure mode.
//!
//! The listener uses Pingora's own rustls acceptor with a custom `ResolvesServerCert`
//! (Pingora's certificate callback is not called under rustls). The connection harness of
//! [`server`](crate::server) drives the handshake: it must finish within the header timeout
//! and counts against the connection cap of [`ClientLimits`](crate::ClientLimits).
//!
//! # Example
//! ```no_run
//! use pingora_tower::proxy::{PingoraProxy, Route, Upstream};
//! use pingora_tower::tls::{CertSet, ServerCert, TlsConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let certs = CertSet::new(ServerCert::from_pem_files("default.pem", "default.key")?)
//!     .with_name("api.example.com", ServerCert::from_pem_files("api.pem", "api.key")?)?
//!     .with_name("*.example.com", ServerCert::from_pem_files("wild.pem", "wild.key")?)?;
//! let tls = TlsConfig::new(certs);
//! let _watch = tls.reloader().watch_files(std::time::Duration::from_secs(10));
//! let running = PingoraProxy::builder("0.0.0.0:443")
//!     .route(Route::prefix("/", Upstream::new("http://127.0.0.1:9000")))
//!     .tls(tls)
//!     .spawn()
//!     .await?;
//! # running.shutdown().await; Ok(()) }
//! ```

mod cert;
mod config;
mod error;
mod info;
mod reload;
mod resolver;
mod upstream;

pub use cert::ServerCert;
pub use config::{ClientAuth, TlsConfig};
pub use error::TlsConfigError;
pub use info::{ClientCert, TlsInfo};
pub use reload::{ReloadWatch, TlsReloader};
pub use resolver::CertSet;
pub use tokio::signal::unix::SignalKind;
pub(crate) use upstream::PeerTls;
pub use upstream::UpstreamTls;
