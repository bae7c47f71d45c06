//! [`ProxyBuilder`] → [`ProxyServer`] → [`RunningProxy`]: configure, validate, serve.

use crate::serve::DEFAULT_MAX_HEADER_BYTES;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::ProxyHttp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::layer::util::{Identity, Stack};
use tower::ServiceBuilder;
use tower_layer::Layer;

use super::error::{ProxyConfigError, ProxyError};
use super::route::{Route, RouteTable};
use super::routing::{BackendStatus, Hygiene, RoutingProxy, Timeouts};
use super::upstream::UpstreamGroup;
use crate::server::{self, ClientLimits, RunningServer};

/// Size of the upstream keep-alive connection pool (idle connections kept across all
/// backends), the `ServerConf::upstream_keepalive_pool_size` the proxy uses by default.
pub const DEFAULT_UPSTREAM_KEEPALIVE_POOL: usize = 128;

/// Configures a proxy: listen address, routes, timeouts and `tower` layers. Made by
/// [`PingoraProxy::builder`](super::PingoraProxy::builder); nothing is validated or bound
/// until [`build`](Self::build).
#[derive(Debug)]
pub struct ProxyBuilder<L = Identity> {
    addr: String,
    routes: Vec<Route>,
    connect_ms: Option<u64>,
    request_ms: Option<u64>,
    layers: ServiceBuilder<L>,
    conf: ServerConf,
    h2c: bool,
    max_header_bytes: usize,
    forwarded_headers: bool,
    threads: Option<usize>,
    hygiene: Hygiene,
    limits: ClientLimits,
}

impl ProxyBuilder<Identity> {
    pub(crate) fn new(addr: &str) -> Self {
        let conf = ServerConf {
            upstream_keepalive_pool_size: DEFAULT_UPSTREAM_KEEPALIVE_POOL,
            ..ServerConf::default()
        };
        ProxyBuilder {
            addr: addr.to_owned(),
            routes: Vec::new(),
            connect_ms: None,
            request_ms: None,
            layers: ServiceBuilder::new(),
            conf,
            h2c: false,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            forwarded_headers: true,
            threads: None,
            hygiene: Hygiene::default(),
            limits: ClientLimits::default(),
        }
    }
}

impl<L> ProxyBuilder<L> {
    /// Adds routes (see [`Route`] for matching and precedence).
    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// Adds one route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// `connect_ms` limits each connection attempt (TCP connect plus TLS handshake; default
    /// 5 000). `request_ms` is a deadline for the whole request, across every attempt: the
    /// proxy answers `504` when it passes before the upstream answered, and cuts a body still
    /// streaming then. Without it there is no overall deadline, only the 60 s idle limits on
    /// each upstream read and write.
    pub fn with_timeouts(mut self, connect_ms: u64, request_ms: u64) -> Self {
        self.connect_ms = Some(connect_ms);
        self.request_ms = Some(request_ms);
        self
    }

    /// Wraps the proxy in a `tower` layer whose service implements Pingora's `ProxyHttp`.
    /// Layers stack like `ServiceBuilder`: the first one added is the outermost, so it sees
    /// each phase first.
    pub fn middleware<T>(self, layer: T) -> ProxyBuilder<Stack<T, L>> {
        ProxyBuilder {
            addr: self.addr,
            routes: self.routes,
            connect_ms: self.connect_ms,
            request_ms: self.request_ms,
            layers: self.layers.layer(layer),
            conf: self.conf,
            h2c: self.h2c,
            max_header_bytes: self.max_header_bytes,
            forwarded_headers: self.forwarded_headers,
            threads: self.threads,
            hygiene: self.hygiene,
            limits: self.limits,
        }
    }

    /// Replaces the Pingora server configuration (only the upstream connector settings such
    /// as `upstream_keepalive_pool_size` and `max_retries` matter here; the proxy runs on the
    /// caller's tokio runtime, not on Pingora's threads).
    pub fn server_conf(mut self, conf: ServerConf) -> Self {
        self.conf = conf;
        self
    }

    /// Largest accepted request head (request line plus headers), in bytes; larger ones are
    /// answered `431` before any upstream work. Defaults to [`DEFAULT_MAX_HEADER_BYTES`].
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Whether upstream requests get `X-Forwarded-For` (the client IP appended),
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`. On by default. Turning them off saves about
    /// the largest single cost per request (Pingora's `insert_header` keeps two header maps; see
    /// BENCHMARKS.md), like nginx and HAProxy, which add none unless configured.
    pub fn forwarded_headers(mut self, enabled: bool) -> Self {
        self.forwarded_headers = enabled;
        self
    }

    /// Serves from `threads` threads of its own, each with a current-thread tokio runtime
    /// (see [`server::spawn_threads`]), instead of on the runtime that calls
    /// [`spawn`](ProxyServer::spawn). A connection stays on the thread that accepted it; on one
    /// core this was cheaper per request than a multi-thread runtime (BENCHMARKS.md).
    /// Health checks still run on the calling runtime.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Whether runs of `/` in request paths collapse into one before routing (`//a///b` →
    /// `/a/b`; the upstream then receives the merged path). Off by default: most servers treat
    /// `//` as a distinct path. The rest of path normalisation is always on (see
    /// [`Route`](super::Route)).
    pub fn merge_slashes(mut self, enabled: bool) -> Self {
        self.hygiene.path.merge_slashes = enabled;
        self
    }

    /// Whether client-sent `Forwarded` and `X-Real-IP` headers reach the upstream. Off by
    /// default: the proxy cannot vouch for them, so it removes them. Turn this on only behind
    /// another proxy that sets them itself. (`X-Forwarded-For` is always appended to, see
    /// [`forwarded_headers`](Self::forwarded_headers).)
    pub fn keep_client_forwarded(mut self, keep: bool) -> Self {
        self.hygiene.keep_client_forwarded = keep;
        self
    }

    /// Also accepts cleartext HTTP/2 with prior knowledge (h2c) from clients.
    pub fn h2c(mut self, enabled: bool) -> Self {
        self.h2c = enabled;
        self
    }

    /// Total time a client has to send a request head: from the accept for a connection's
    /// first request, from the first byte for each later one on a keep-alive connection.
    /// An incomplete head is answered `408` and the connection closed; a connection that sent
    /// nothing is closed quietly. Default
    /// [`DEFAULT_HEADER_TIMEOUT`](crate::server::DEFAULT_HEADER_TIMEOUT), 60 s (nginx
    /// `client_header_timeout`).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.limits = self.limits.header_timeout(timeout);
        self
    }

    /// How long a client connection may stay idle between requests before it is closed.
    /// Default [`DEFAULT_KEEPALIVE_TIMEOUT`](crate::server::DEFAULT_KEEPALIVE_TIMEOUT), 75 s
    /// (nginx `keepalive_timeout`); Pingora alone keeps it open forever.
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.limits = self.limits.keepalive_timeout(timeout);
        self
    }

    /// Longest wait for the next bytes of a request body; the connection is closed when it
    /// passes (the upstream request is aborted). Pingora keeps a read open on the client while
    /// it waits for the upstream (to notice a client that leaves), so this also bounds how long
    /// a silent client waits for a slow upstream: keep it at least as long as the upstream read
    /// timeout (60 s both, by default). Default
    /// [`DEFAULT_BODY_TIMEOUT`](crate::server::DEFAULT_BODY_TIMEOUT), 60 s (nginx
    /// `client_body_timeout`).
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.limits = self.limits.body_timeout(timeout);
        self
    }

    /// Longest a write to the client may make no progress (a client that stopped reading);
    /// the connection is closed when it passes. Default
    /// [`DEFAULT_SEND_TIMEOUT`](crate::server::DEFAULT_SEND_TIMEOUT), 60 s (nginx
    /// `send_timeout`).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.limits = self.limits.send_timeout(timeout);
        self
    }

    /// Most client connections served at once (across every thread); a connection beyond it
    /// is closed as soon as it is accepted, like Envoy's listener limit. Default
    /// [`DEFAULT_MAX_CONNECTIONS`](crate::server::DEFAULT_MAX_CONNECTIONS). Each client
    /// connection may hold an upstream one too: keep it under half of `ulimit -n`.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.limits = self.limits.max_connections(connections);
        self
    }

    /// Validates the routes, upstreams and timeouts, resolves upstream host names, builds the
    /// load balancers and applies the layers.
    ///
    /// # Errors
    /// [`ProxyConfigError`], naming the offending field and value.
    pub fn build(self) -> Result<ProxyServer<L::Service>, ProxyConfigError>
    where
        L: Layer<RoutingProxy>,
    {
        let mut timeouts = Timeouts::default();
        if let Some(ms) = self.connect_ms {
            if ms == 0 {
                return Err(ProxyConfigError::InvalidTimeout {
                    field: "connect_ms",
                });
            }
            timeouts.connect = Duration::from_millis(ms);
        }
        if let Some(ms) = self.request_ms {
            if ms == 0 {
                return Err(ProxyConfigError::InvalidTimeout {
                    field: "request_ms",
                });
            }
            timeouts.request = Some(Duration::from_millis(ms));
        }
        self.limits
            .validate()
            .map_err(|e| ProxyConfigError::InvalidClientLimit {
                field: e.field,
                value: e.value,
            })?;
        if self.threads == Some(0) {
            return Err(ProxyConfigError::InvalidThreads { threads: 0 });
        }
        let table = RouteTable::build(&self.routes)?;
        let mut groups = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            if route.upstream().is_empty() {
                return Err(ProxyConfigError::EmptyUpstream {
                    route: route.name(),
                });
            }
            groups.push(UpstreamGroup::build(route.upstream())?);
        }
        let base = RoutingProxy::new(
            table,
            groups,
            timeouts,
            self.max_header_bytes,
            self.forwarded_headers,
            self.hygiene,
        );
        Ok(ProxyServer {
            service: self.layers.service(base.clone()),
            base,
            addr: self.addr,
            conf: Arc::new(self.conf),
            h2c: self.h2c,
            threads: self.threads,
            limits: self.limits,
        })
    }

    /// [`build`](Self::build), then [`ProxyServer::start`]: serves until SIGINT or SIGTERM.
    ///
    /// # Errors
    /// A configuration error, or an I/O error binding the address.
    pub async fn start(self) -> Result<(), ProxyError>
    where
        L: Layer<RoutingProxy>,
        L::Service: ProxyHttp + Send + Sync + 'static,
        <L::Service as ProxyHttp>::CTX: Send + Sync,
    {
        self.build()?.start().await?;
        Ok(())
    }

    /// [`build`](Self::build), then [`ProxyServer::spawn`].
    ///
    /// # Errors
    /// A configuration error, or an I/O error binding the address.
    pub async fn spawn(self) -> Result<RunningProxy, ProxyError>
    where
        L: Layer<RoutingProxy>,
        L::Service: ProxyHttp + Send + Sync + 'static,
        <L::Service as ProxyHttp>::CTX: Send + Sync,
    {
        Ok(self.build()?.spawn().await?)
    }
}

/// A validated proxy, ready to [`start`](Self::start) or [`spawn`](Self::spawn). `S` is the
/// layered `ProxyHttp` service ([`RoutingProxy`] without middleware).
#[derive(Debug)]
pub struct ProxyServer<S> {
    service: S,
    base: RoutingProxy,
    addr: String,
    conf: Arc<ServerConf>,
    h2c: bool,
    threads: Option<usize>,
    limits: ClientLimits,
}

impl<S> ProxyServer<S>
where
    S: ProxyHttp + Send + Sync + 'static,
    S::CTX: Send + Sync,
{
    /// Binds the listen address, starts the health checks and serves on the current tokio
    /// runtime until SIGINT (Ctrl-C) or SIGTERM, then shuts down gracefully: no new
    /// connections, in-flight requests finish (up to
    /// [`DEFAULT_SHUTDOWN_GRACE`](crate::server::DEFAULT_SHUTDOWN_GRACE)).
    ///
    /// # Errors
    /// Binding the address or installing the signal handlers failed.
    pub async fn start(self) -> std::io::Result<()> {
        let running = self.spawn().await?;
        tracing::info!(addr = %running.local_addr(), "proxy listening");
        let signal = shutdown_signal().await;
        tracing::info!("shutdown signal received, draining connections");
        running.shutdown().await;
        signal
    }

    /// Binds the listen address (`"127.0.0.1:0"` picks a free port), starts the health
    /// checks and serves in the background until [`RunningProxy::shutdown`] (or drop): on the
    /// current runtime, or on threads of its own with [`ProxyBuilder::threads`].
    ///
    /// # Errors
    /// The address does not parse or cannot be bound.
    pub async fn spawn(self) -> std::io::Result<RunningProxy> {
        let (stop, stop_rx) = watch::channel(false);
        let health_tasks = self
            .base
            .groups()
            .iter()
            .filter_map(|g| g.spawn_health_checks(stop_rx.clone()))
            .collect();
        let mut app = pingora_proxy::http_proxy(&self.conf, self.service);
        if self.h2c {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            app.server_options = Some(options);
        }
        // On a bind error, dropping `stop` ends the health checks again.
        let server = match self.threads {
            Some(threads) => {
                server::spawn_threads_with(&self.addr, app, threads, self.limits).await?
            }
            None => server::spawn_with(&self.addr, app, self.limits).await?,
        };
        Ok(RunningProxy {
            local_addr: server.local_addr(),
            server: Some(server),
            base: self.base,
            stop,
            health_tasks,
        })
    }

    /// The layered service.
    pub fn service(&self) -> &S {
        &self.service
    }
}

impl<S> ProxyServer<S> {
    /// The base proxy, for [`RoutingProxy::backends`].
    pub fn routing(&self) -> &RoutingProxy {
        &self.base
    }
}

/// A proxy serving in the background. Dropping it stops accepting and stops the health checks;
/// [`shutdown`](Self::shutdown) also waits for in-flight requests.
#[derive(Debug)]
pub struct RunningProxy {
    server: Option<RunningServer>,
    local_addr: std::net::SocketAddr,
    base: RoutingProxy,
    stop: watch::Sender<bool>,
    health_tasks: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// The address actually bound.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Client connections being served right now.
    pub fn active_connections(&self) -> usize {
        self.server
            .as_ref()
            .map_or(0, RunningServer::active_connections)
    }

    /// Every backend with its current health (see [`RoutingProxy::backends`]).
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.base.backends()
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the server's grace
    /// period), then stops the health checks.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.health_tasks) {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a health check task ended abnormally");
            }
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
