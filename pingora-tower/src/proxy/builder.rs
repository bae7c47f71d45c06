//! [`ProxyBuilder`] → [`ProxyServer`] → [`RunningProxy`]: configure, validate, serve.

use std::sync::Arc;
use std::time::Duration;

use middlewares::obs::{Metrics, ObsLayer};
use middlewares::timeout::TimeoutLayer;
use middlewares::Layered;

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
use super::routing::{BackendStatus, Hygiene, RoutingProxy};
use super::timeouts::Timeouts;
use super::upstream::UpstreamGroup;
use crate::admin::Admin;
use crate::serve::DEFAULT_MAX_HEADER_BYTES;
use crate::server::{self, AcceptFilter, ClientLimits, ListenOptions, RunningServer};
use crate::tls::TlsConfig;
use crate::ServeTower;

/// The proxy the builder's `.middleware(..)` layers wrap: [`RoutingProxy`] inside the timeout
/// policy that enforces [`ProxyBuilder::request_timeout`] (`None` when no request timeout is
/// set, which costs a branch per phase). A timeout layer added with `.middleware(..)` is a
/// second deadline around it; the shorter one wins.
pub type BaseProxy = Layered<Option<TimeoutLayer>, RoutingProxy>;

/// A timeout as set on the builder, with the name of the setting for a config error.
type Setting = Option<(Duration, &'static str)>;

/// The upstream timeouts as set on the builder, validated by `build`.
#[derive(Debug, Clone, Copy, Default)]
struct TimeoutSettings {
    connect: Setting,
    request: Setting,
    response: Setting,
    read: Setting,
    write: Setting,
}

impl TimeoutSettings {
    /// The per-attempt timeouts and the request timeout, or the first zero one.
    fn validate(self) -> Result<(Timeouts, Option<Duration>), ProxyConfigError> {
        fn check(setting: Setting) -> Result<Option<Duration>, ProxyConfigError> {
            match setting {
                Some((d, field)) if d.is_zero() => Err(ProxyConfigError::InvalidTimeout { field }),
                Some((d, _)) => Ok(Some(d)),
                None => Ok(None),
            }
        }
        let mut timeouts = Timeouts::default();
        if let Some(d) = check(self.connect)? {
            timeouts.connect = d;
        }
        let request = check(self.request)?;
        timeouts.response = check(self.response)?;
        if let Some(d) = check(self.read)? {
            timeouts.read = d;
        }
        if let Some(d) = check(self.write)? {
            timeouts.write = d;
        }
        Ok((timeouts, request))
    }
}

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
    timeouts: TimeoutSettings,
    layers: ServiceBuilder<L>,
    conf: ServerConf,
    h2c: bool,
    max_header_bytes: usize,
    forwarded_headers: bool,
    threads: Option<usize>,
    hygiene: Hygiene,
    limits: ClientLimits,
    listen: Listen,
    obs: ObsSettings,
}

/// Accept-time filter, socket layout and TLS, handed to the server as [`ListenOptions`].
#[derive(Debug, Clone, Default)]
struct Listen {
    accept_filter: Option<AcceptFilter>,
    reuse_port: bool,
    tls: Option<TlsConfig>,
}

/// The admin listener and metrics, as set on the builder.
#[derive(Debug, Default)]
struct ObsSettings {
    admin: Option<String>,
    metrics: Option<Metrics>,
    layer: Option<ObsLayer>,
    breaker_control: bool,
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
            timeouts: TimeoutSettings::default(),
            layers: ServiceBuilder::new(),
            conf,
            h2c: false,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            forwarded_headers: true,
            threads: None,
            hygiene: Hygiene::default(),
            limits: ClientLimits::default(),
            listen: Listen::default(),
            obs: ObsSettings::default(),
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

    /// Short form of [`connect_timeout`](Self::connect_timeout) and
    /// [`request_timeout`](Self::request_timeout), in milliseconds: `connect_ms` limits each
    /// connection attempt (default 5 000), `request_ms` is the deadline for the whole request
    /// across every attempt.
    pub fn with_timeouts(mut self, connect_ms: u64, request_ms: u64) -> Self {
        self.timeouts.connect = Some((Duration::from_millis(connect_ms), "connect_ms"));
        self.timeouts.request = Some((Duration::from_millis(request_ms), "request_ms"));
        self
    }

    /// Limits each connection attempt to an upstream (TCP connect plus TLS handshake; nginx
    /// `proxy_connect_timeout`). A refused or timed-out connect fails over to another backend.
    /// Default [`DEFAULT_CONNECT_TIMEOUT`](super::DEFAULT_CONNECT_TIMEOUT), 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = Some((timeout, "connect_timeout"));
        self
    }

    /// A deadline for the whole request, across every attempt (Envoy's route `timeout`): each
    /// attempt's connect, read and write timeouts are clamped to what is left, the proxy
    /// answers `504` when it passes before the upstream's response head (and refuses a head
    /// that completes after it), no attempt is retried or started past it, and an upload or a
    /// response body still streaming then is cut. None by default: only the per-attempt
    /// timeouts apply.
    ///
    /// It is a [`TimeoutLayer`] policy installed innermost around the base proxy (see
    /// [`BaseProxy`]); a `.middleware(middlewares::timeout(ms))` on top is a second deadline,
    /// and the shorter one wins.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.request = Some((timeout, "request_timeout"));
        self
    }

    /// Limits each attempt's time to the upstream's response head, from the attempt's start
    /// (connect, sending the request, waiting for the head; Envoy's `per_try_timeout`). An
    /// attempt that runs out fails as an upstream read timeout: an idempotent request fails
    /// over to a backend it has not tried, anything else is answered `504`. None by default.
    ///
    /// Pingora sets one read and one write timeout per attempt, for the head and the body
    /// alike, and lets nothing change them once the head arrived. So this is enforced by
    /// clamping the attempt's connect, read and write timeouts to it (a silent upstream is cut
    /// exactly when it runs out) and by refusing a head that completes later (a head trickled
    /// a byte at a time is never forwarded late, though the wait lasts until it completes or a
    /// read stalls for the whole limit). The same clamp bounds every read and write of that
    /// attempt's response body: keep it at least as long as the longest pause expected
    /// mid-body. See [`AttemptTimeout`](middlewares::proxy_host::AttemptTimeout).
    pub fn upstream_response_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.response = Some((timeout, "upstream_response_timeout"));
        self
    }

    /// Longest wait for the next bytes from an upstream, head or body (nginx
    /// `proxy_read_timeout`): a response body that pauses longer is cut. Default
    /// [`DEFAULT_UPSTREAM_IO_TIMEOUT`](super::DEFAULT_UPSTREAM_IO_TIMEOUT), 60 s; a request
    /// deadline shortens it to what is left.
    pub fn upstream_read_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.read = Some((timeout, "upstream_read_timeout"));
        self
    }

    /// Longest a write to an upstream (the request head or a chunk of its body) may make no
    /// progress (nginx `proxy_send_timeout`). Default
    /// [`DEFAULT_UPSTREAM_IO_TIMEOUT`](super::DEFAULT_UPSTREAM_IO_TIMEOUT), 60 s; a request
    /// deadline shortens it to what is left.
    pub fn upstream_write_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.write = Some((timeout, "upstream_write_timeout"));
        self
    }

    /// Wraps the proxy in a `tower` layer whose service implements Pingora's `ProxyHttp`.
    /// Layers stack like `ServiceBuilder`: the first one added is the outermost, so it sees
    /// each phase first. Every layer wraps [`BaseProxy`], so the request deadline
    /// ([`request_timeout`](Self::request_timeout)) is always the innermost policy.
    pub fn middleware<T>(self, layer: T) -> ProxyBuilder<Stack<T, L>> {
        ProxyBuilder {
            addr: self.addr,
            routes: self.routes,
            timeouts: self.timeouts,
            layers: self.layers.layer(layer),
            conf: self.conf,
            h2c: self.h2c,
            max_header_bytes: self.max_header_bytes,
            forwarded_headers: self.forwarded_headers,
            threads: self.threads,
            hygiene: self.hygiene,
            limits: self.limits,
            listen: self.listen,
            obs: self.obs,
        }
    }

    /// Adds an access list ([`middlewares::acl`]) as the next layer, like
    /// [`middleware`](Self::middleware), and closes connections from the addresses it denies
    /// outright as soon as they are accepted ([`deny_at_accept`](Self::deny_at_accept)).
    /// Add it first, so that its refusals come before any other layer's admission.
    pub fn acl(
        self,
        acl: middlewares::acl::AclLayer,
    ) -> ProxyBuilder<Stack<middlewares::acl::AclLayer, L>> {
        self.deny_at_accept(&acl).middleware(acl)
    }

    /// Closes a connection at accept, before reading a byte (no TLS handshake), when `acl`
    /// denies every request from its address ([`AclLayer::denies_at_accept`]). Only the
    /// filter: the requests of the other connections are checked by the layer, which
    /// [`acl`](Self::acl) adds too. Nothing is installed when the list never denies by
    /// address alone, or in a dry run.
    ///
    /// [`AclLayer::denies_at_accept`]: middlewares::acl::AclLayer::denies_at_accept
    pub fn deny_at_accept(mut self, acl: &middlewares::acl::AclLayer) -> Self {
        if acl.filters_at_accept() {
            self.listen.accept_filter = Some(AcceptFilter::acl(acl));
        }
        self
    }

    /// With [`threads`](Self::threads): one `SO_REUSEPORT` listening socket per thread, so
    /// the kernel spreads new connections over the threads, instead of one socket every
    /// thread accepts from (see [`ListenOptions::reuse_port`]). Off by default; without
    /// `threads`, [`build`](Self::build) refuses it. BENCHMARKS.md compares the two.
    pub fn reuse_port(mut self, enabled: bool) -> Self {
        self.listen.reuse_port = enabled;
        self
    }

    /// Terminates TLS on the listen address (certificates by SNI, ALPN `h2`/`http/1.1`,
    /// optional client certificates; see [`crate::tls`]). Upstream requests then carry
    /// `X-Forwarded-Proto: https`.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.listen.tls = Some(tls);
        self
    }

    /// Serves the admin pages on `addr` (e.g. `"127.0.0.1:9901"`; off by default): `/metrics`
    /// (Prometheus text), `/status` (JSON) and `/` (an HTML status page). With it, the proxy
    /// records its metrics with no further call: the `obs` layer
    /// ([`middlewares::obs::ObsLayer`]) runs outermost, around every `.middleware(..)`, and
    /// routed requests carry their route's [`label`](super::Route::label). Bind it to
    /// loopback or a private network. [`RunningProxy::admin_addr`] reports the bound address.
    /// Read-only unless [`admin_breaker_control`](Self::admin_breaker_control) is set.
    pub fn admin(mut self, addr: &str) -> Self {
        self.obs.admin = Some(addr.to_owned());
        self
    }

    /// Lets the admin listener force a backend's circuit breaker open or closed, or hand it
    /// back to automatic operation: `POST /breakers/{key}/open`, `/closed` and `/reset`, the
    /// key being the backend's socket address (`127.0.0.1:9000`). Off by default, and then
    /// such requests are refused with `403`. Anyone who reaches the admin listener can then
    /// take a backend out of service (or keep a failing one in), so the listener must be on
    /// loopback or a private network. Requests a browser sends for a web page (with `Origin`,
    /// or a `Host` that is a name other than `localhost`) are refused. The breakers are those
    /// whose handle was given to `Metrics::watch_breakers` (see [`metrics`](Self::metrics));
    /// an unknown key is `404` and creates nothing. Without [`admin`](Self::admin), [`build`](Self::build) refuses it.
    pub fn admin_breaker_control(mut self, enabled: bool) -> Self {
        self.obs.breaker_control = enabled;
        self
    }

    /// Records into `metrics` (default: a fresh registry when [`admin`](Self::admin) is set),
    /// so the layers can report into the same registry: give it to
    /// `RateLimitBuilder::observer` and `RetryBuilder::observer`, its
    /// `on_breaker_transition()` to `CircuitBreakerBuilder::on_state_transition`, and the
    /// breaker layer's handle to `Metrics::watch_breakers`. Also turns on the `obs` layer
    /// without an admin listener (serve [`Metrics::render`] yourself).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.obs.metrics = Some(metrics);
        self
    }

    /// Runs this `obs` layer outermost instead of the default `ObsLayer::new()` (e.g. another
    /// request id header, or `start_traces(true)`). Its metrics, if it has some, are the
    /// proxy's unless [`metrics`](Self::metrics) is set too (then those win).
    pub fn observability(mut self, layer: ObsLayer) -> Self {
        self.obs.layer = Some(layer);
        self
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
    /// (see [`ListenOptions::threads`](server::ListenOptions::threads)), instead of on the
    /// runtime that calls [`spawn`](ProxyServer::spawn). A connection stays on the thread that
    /// accepted it; on one core this was cheaper per request than a multi-thread runtime
    /// (BENCHMARKS.md).
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
        L: Layer<BaseProxy>,
    {
        let (timeouts, request_timeout) = self.timeouts.validate()?;
        self.limits
            .validate()
            .map_err(|e| ProxyConfigError::InvalidClientLimit {
                field: e.field,
                value: e.value,
            })?;
        if self.threads == Some(0) {
            return Err(ProxyConfigError::InvalidThreads { threads: 0 });
        }
        if self.listen.reuse_port && self.threads.is_none() {
            return Err(ProxyConfigError::ReusePortWithoutThreads);
        }
        if self.obs.breaker_control && self.obs.admin.is_none() {
            return Err(ProxyConfigError::BreakerControlWithoutAdmin);
        }
        let table = RouteTable::build(&self.routes)?;
        let layer_metrics = self
            .obs
            .layer
            .as_ref()
            .and_then(|l| l.metrics_ref().cloned());
        let metrics = match (&self.obs.admin, self.obs.metrics.or(layer_metrics)) {
            (_, Some(metrics)) => Some(metrics),
            (Some(_), None) => Some(Metrics::new()),
            (None, None) => None,
        };
        if let (Some(_), Some(metrics)) = (&self.obs.admin, &metrics) {
            // `/status` and the status page show the last minutes.
            metrics.keep_recent();
        }
        let route_labels: Arc<[Arc<str>]> =
            self.routes.iter().map(|r| Arc::from(r.label())).collect();
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
            metrics.as_ref().map(|_| route_labels.clone()),
        );
        let layer = self.obs.layer.unwrap_or_default();
        let breaker_control = self.obs.breaker_control;
        let obs = metrics.map(|metrics| ObsRun {
            layer: layer
                .metrics(metrics.clone())
                .route_of(Arc::new(base.clone())),
            admin: self.obs.admin.map(|addr| {
                let admin = Admin::new(metrics, base.clone(), route_labels);
                (addr, admin.breaker_control(breaker_control))
            }),
        });
        Ok(ProxyServer {
            service: self.layers.service(Layered::wrap(
                request_timeout.map(TimeoutLayer::new),
                base.clone(),
            )),
            base,
            addr: self.addr,
            conf: Arc::new(self.conf),
            h2c: self.h2c,
            threads: self.threads,
            limits: self.limits,
            listen: self.listen,
            obs,
        })
    }

    /// [`build`](Self::build), then [`ProxyServer::start`]: serves until SIGINT or SIGTERM.
    ///
    /// # Errors
    /// A configuration error, or an I/O error binding the address.
    pub async fn start(self) -> Result<(), ProxyError>
    where
        L: Layer<BaseProxy>,
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
        L: Layer<BaseProxy>,
        L::Service: ProxyHttp + Send + Sync + 'static,
        <L::Service as ProxyHttp>::CTX: Send + Sync,
    {
        Ok(self.build()?.spawn().await?)
    }
}

/// A validated proxy, ready to [`start`](Self::start) or [`spawn`](Self::spawn). `S` is the
/// layered `ProxyHttp` service ([`BaseProxy`] without middleware).
#[derive(Debug)]
pub struct ProxyServer<S> {
    service: S,
    base: RoutingProxy,
    addr: String,
    conf: Arc<ServerConf>,
    h2c: bool,
    threads: Option<usize>,
    limits: ClientLimits,
    listen: Listen,
    obs: Option<ObsRun>,
}

/// The `obs` layer the proxy runs outermost, and the admin listener to start with it.
#[derive(Debug)]
struct ObsRun {
    layer: ObsLayer,
    admin: Option<(String, Admin)>,
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
        let mut options = ListenOptions::new()
            .limits(self.limits)
            .reuse_port(self.listen.reuse_port);
        if let Some(filter) = self.listen.accept_filter {
            options = options.accept_filter(filter);
        }
        if let Some(tls) = self.listen.tls {
            options = options.tls(tls);
        }
        if let Some(threads) = self.threads {
            options = options.threads(threads);
        }
        let (layer, admin) = match self.obs {
            Some(obs) => (Some(obs.layer), obs.admin),
            None => (None, None),
        };
        let metrics = layer.as_ref().and_then(|l| l.metrics_ref().cloned());
        // On a bind error, dropping `stop` ends the health checks again.
        let server = match layer {
            Some(layer) => {
                let service = Layered::wrap(layer, self.service);
                serve_proxy(&self.addr, &self.conf, service, self.h2c, options).await?
            }
            None => serve_proxy(&self.addr, &self.conf, self.service, self.h2c, options).await?,
        };
        let admin = match admin {
            Some((addr, admin)) => Some(server::spawn(&addr, ServeTower::new(admin)).await?),
            None => None,
        };
        let obs = metrics.map(|metrics| Box::new((metrics, admin)));
        Ok(RunningProxy {
            local_addr: server.local_addr(),
            server: Some(server),
            obs,
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

/// Serves `service` as a Pingora proxy on `addr`.
async fn serve_proxy<S>(
    addr: &str,
    conf: &Arc<ServerConf>,
    service: S,
    h2c: bool,
    options: ListenOptions,
) -> std::io::Result<RunningServer>
where
    S: ProxyHttp + Send + Sync + 'static,
    S::CTX: Send + Sync,
{
    let mut app = pingora_proxy::http_proxy(conf, service);
    if h2c {
        let mut http_options = HttpServerOptions::default();
        http_options.h2c = true;
        app.server_options = Some(http_options);
    }
    server::spawn_with(addr, app, options).await
}

/// A proxy serving in the background. Dropping it stops accepting and stops the health checks;
/// [`shutdown`](Self::shutdown) also waits for in-flight requests.
#[derive(Debug)]
pub struct RunningProxy {
    server: Option<RunningServer>,
    /// The metrics and the admin listener; boxed, so the handle stays small without them.
    obs: Option<Box<(Metrics, Option<RunningServer>)>>,
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

    /// The admin listener's bound address, when [`ProxyBuilder::admin`] was set.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.obs
            .as_ref()
            .and_then(|obs| obs.1.as_ref())
            .map(RunningServer::local_addr)
    }

    /// The metrics the proxy records, when [`ProxyBuilder::admin`] or
    /// [`ProxyBuilder::metrics`] was set.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.obs.as_ref().map(|obs| &obs.0)
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
        if let Some(admin) = self.obs.as_mut().and_then(|obs| obs.1.take()) {
            admin.shutdown().await;
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
