//! A ready reverse proxy on Pingora: routing by host and path prefix, weighted or
//! consistent-hash balancing with active health checks (`pingora-load-balancing`), failover on
//! connect errors, a request deadline, `X-Forwarded-*` headers, and `tower` layers around it.
//!
//! - [`PingoraProxy`] is the entry point: [`start`](PingoraProxy::start) (demo shortcut),
//!   [`with_routes`](PingoraProxy::with_routes) and [`builder`](PingoraProxy::builder).
//! - [`ProxyBuilder`] collects [`Route`]s, timeouts and `.middleware(layer)`s;
//!   [`build`](ProxyBuilder::build) validates everything into a [`ProxyServer`], which
//!   [`start`](ProxyServer::start)s (until SIGINT/SIGTERM) or [`spawn`](ProxyServer::spawn)s
//!   (a [`RunningProxy`] for tests and embedding).
//! - [`RoutingProxy`] is the base `ProxyHttp`; its docs state the `upstream_peer` contract
//!   layers can rely on, and [`ProxyCtx`] its per-request state. The layers wrap
//!   [`BaseProxy`]: `RoutingProxy` inside the timeout policy of the request deadline.
//!
//! # Upstream timeouts
//! Set separately, like nginx's `proxy_*_timeout`s and Envoy's route and per-try timeouts:
//! - [`connect_timeout`](ProxyBuilder::connect_timeout): each connection attempt;
//! - [`upstream_response_timeout`](ProxyBuilder::upstream_response_timeout): each attempt's
//!   time to the response head (a failover for what may be retried, else `504`);
//! - [`upstream_read_timeout`](ProxyBuilder::upstream_read_timeout) /
//!   [`upstream_write_timeout`](ProxyBuilder::upstream_write_timeout): the longest pause in
//!   one read or write (60 s);
//! - [`request_timeout`](ProxyBuilder::request_timeout): one deadline for the whole request
//!   across every attempt, enforced by the same timeout policy a `middlewares::timeout` layer
//!   uses (`504`; no retry or new attempt past it; an upload or body outliving it is cut).
//!
//! [`with_timeouts(connect_ms, request_ms)`](ProxyBuilder::with_timeouts) is the short form of
//! the first and the last.
//!
//! # One canonical request target
//! Routes match the request's canonical host and path, and the upstream receives them: the
//! host case-folded and checked as an authority, the path with unreserved escapes decoded and
//! dot segments removed; encoded `/`, `\` and NUL, raw `\`, and malformed hosts are answered
//! `400` (rules in [`Route`](Route#canonical-request-target)). An absolute-form request
//! (`GET http://host/ HTTP/1.1`) routes by its own authority and is forwarded in origin-form.
//! Client-sent `Forwarded` and `X-Real-IP` are removed unless
//! [`ProxyBuilder::keep_client_forwarded`]; `X-Forwarded-For` is appended to, never replaced.
//!
//! The proxy runs on the caller's tokio runtime through [`server::spawn`](crate::server::spawn)
//! (Pingora's `HttpProxy` built by `pingora_proxy::http_proxy`), with Pingora's upstream
//! connection pool ([`DEFAULT_UPSTREAM_KEEPALIVE_POOL`] idle connections, each kept
//! [`DEFAULT_UPSTREAM_IDLE_TIMEOUT`]).
//!
//! # What costs what
//! Measured in `BENCHMARKS.md` (instructions per proxied request under callgrind, against a
//! minimal hand-written `ProxyHttp`):
//! - **Runtime.** [`spawn`](ProxyServer::spawn) serves on whatever runtime calls it;
//!   [`ProxyBuilder::threads`] serves from threads of the proxy's own, a current-thread runtime
//!   each (Pingora's `work_stealing: false` model). On one core, a current-thread runtime was
//!   cheaper in CPU per request than a multi-thread runtime with one worker for the
//!   layered proxy, with more saturated throughput: use `threads(cores)`, or
//!   `#[tokio::main(flavor = "current_thread")]` for one core.
//! - **`X-Forwarded-*` headers** ([`ProxyBuilder::forwarded_headers`], on by default) are the
//!   largest single cost (inside Pingora's `RequestHeader::insert_header`);
//!   turn them off when the upstream does not need the client's address.
//! - **Peer timeouts** (connect, read, write, pool idle; see [Upstream timeouts](#upstream-timeouts))
//!   cost Pingora's timer on every upstream read and write. They are a safety
//!   default and stay on.
//! - **Layers** return the inner proxy's future untouched at phases they do not act in, so the
//!   four layers together cost less than the `X-Forwarded-*` headers.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use pingora_tower::proxy::{HealthCheck, PingoraProxy, Route, Upstream};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let routes = vec![
//!     Route::prefix("/", Upstream::weighted([("http://127.0.0.1:9000", 3), ("http://127.0.0.1:9001", 1)])
//!         .health_check(HealthCheck::http("/health").interval(Duration::from_secs(1)))),
//!     Route::prefix("/api", Upstream::new("http://127.0.0.1:9002")),
//!     Route::host("*.example.com", Upstream::new("https://backend.example.com")),
//! ];
//! let proxy = PingoraProxy::builder("127.0.0.1:0")
//!     .routes(routes)
//!     .with_timeouts(1_000, 10_000)
//!     .middleware(tower::layer::util::Identity::new()) // any Layer whose Service is ProxyHttp
//!     .build()?;
//! let running = proxy.spawn().await?;
//! println!("proxy on http://{}", running.local_addr());
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Writing a layer for the proxy
//! Implement `middlewares::proxy_host::ProxyPolicy` for the layer value: then
//! `middlewares::Layered<YourLayer, S>` is a `ProxyHttp` around any `S`, every Pingora method
//! forwarded, and `.middleware(..)` accepts the layer as soon as it builds that service.

mod builder;
mod ctx;
mod error;
mod failure;
mod forwarded;
mod health;
mod route;
mod routing;
mod timeouts;
mod upstream;

pub use builder::{
    BaseProxy, ProxyBuilder, ProxyServer, RunningProxy, DEFAULT_UPSTREAM_KEEPALIVE_POOL,
};
pub use ctx::ProxyCtx;
pub use error::{ProxyConfigError, ProxyError, RouteName};
pub use failure::NO_BACKEND_LEFT;
pub use forwarded::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP};
pub use health::{
    HealthCheck, DEFAULT_HEALTHY_AFTER, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_UNHEALTHY_AFTER,
};
pub use route::Route;
pub use routing::{BackendStatus, RoutingProxy};
pub use timeouts::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_IDLE_TIMEOUT, DEFAULT_UPSTREAM_IO_TIMEOUT,
};
pub use upstream::{HashKey, Upstream, MAX_WEIGHT};

/// The upstream of the [`PingoraProxy::start`] demo shortcut.
pub const DEMO_UPSTREAM: &str = "http://127.0.0.1:9000";

/// Entry point of the proxy API (a namespace: it has no values).
///
/// - `PingoraProxy::start(addr)`: demo shortcut, every path to [`DEMO_UPSTREAM`].
/// - `PingoraProxy::with_routes(addr, routes)`: `builder(addr).routes(routes)`.
/// - `PingoraProxy::builder(addr)`: the full [`ProxyBuilder`].
///
/// The built proxy is a [`ProxyServer`] rather than a `PingoraProxy<S>`: Rust cannot give one
/// type both the associated function `start(addr)` and the method `start(self)`, and this way
/// every call in the seed API (`PingoraProxy::start(addr)`, `builder.start()`,
/// `proxy.start()`, `proxy.spawn()`) compiles as written.
#[derive(Debug)]
pub enum PingoraProxy {}

impl PingoraProxy {
    /// Proxies every request on `addr` to [`DEMO_UPSTREAM`] until SIGINT or SIGTERM.
    ///
    /// # Errors
    /// An I/O error binding `addr`.
    pub async fn start(addr: &str) -> Result<(), ProxyError> {
        Self::with_routes(addr, [Route::prefix("/", Upstream::new(DEMO_UPSTREAM))])
            .start()
            .await
    }

    /// A builder with these routes: `builder(addr).routes(routes)`.
    pub fn with_routes(addr: &str, routes: impl IntoIterator<Item = Route>) -> ProxyBuilder {
        Self::builder(addr).routes(routes)
    }

    /// A builder listening on `addr` (e.g. `"0.0.0.0:8080"`, or `"127.0.0.1:0"` for a free
    /// port) with no routes, default timeouts and no middleware.
    pub fn builder(addr: &str) -> ProxyBuilder {
        ProxyBuilder::new(addr)
    }
}
