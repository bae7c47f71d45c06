//! Make Pingora and the tower ecosystem speak to each other.
//!
//! - [`ServeTower`] runs any tower HTTP service (an axum `Router`, a hyper service) on a Pingora
//!   listener, streaming bodies both ways.
//! - [`server::spawn`] runs any Pingora app in-process on an address such as `127.0.0.1:0` and
//!   stops it cleanly: for tests, examples, benches and embedding.
//! - [`PingoraProxy`] builds a reverse proxy (routes, balancing, health checks, timeouts) that
//!   `tower` layers can wrap; see the [`proxy`] module.
//!
//! # Example
//! ```no_run
//! use axum::{routing::get, Router};
//! use pingora_tower::{server, ServeTower};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let running = server::spawn("127.0.0.1:0", ServeTower::new(app)).await?;
//! println!("http://{}", running.local_addr());
//! tokio::signal::ctrl_c().await?;
//! running.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod body;
mod http_head;
pub mod proxy;
pub mod serve;
pub mod server;
pub mod tls;

/// The tower layers of the `middlewares` crate (timeout, rate limit, retry, circuit breaker),
/// built with its `pingora` feature so each also wraps a `ProxyHttp`.
pub use middlewares as middleware;

pub use body::{BodyError, PingoraBody};
pub use proxy::{PingoraProxy, ProxyConfigError, Route, RunningProxy, Upstream};
pub use serve::ServeTower;

/// The README's code blocks, compiled as doctests so they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// `docs/tls.md`'s code blocks, compiled as doctests.
#[doc = include_str!("../../docs/tls.md")]
#[cfg(doctest)]
pub struct TlsDocDoctests;
pub use server::{spawn, ClientLimits, RunningServer};
