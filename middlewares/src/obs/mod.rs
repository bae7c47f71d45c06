//! Observability: a `tracing` span per request, an access log line, W3C trace context and a
//! request id passed on, and Prometheus [`Metrics`], in both hosts.
//!
//! [`ObsLayer`] is one layer value for an axum/hyper app and for a Pingora proxy:
//! - **Span** `request` (target [`SPAN_TARGET`]) with `http.request.method`, `url.path`,
//!   `http.route`, `http.response.status_code`, `latency_ms`, `request_id`, `trace_id` and, in
//!   the proxy, `server.address` and `attempts`; each upstream attempt is a `debug` event in it
//!   (target [`ATTEMPT_TARGET`]: attempt number, backend, outcome, time to the head or the
//!   failure). Nothing is formatted unless a subscriber is interested.
//! - **Access log**: one `info` event per request on target [`ACCESS_LOG_TARGET`], so a
//!   subscriber can route it to a file or turn it off: `client`, `method`, `target`, `status`,
//!   `bytes`, `duration_ms`, `upstream`, `attempts`, `request_id`.
//! - **Trace context**: a valid incoming `traceparent` is continued (the proxy sends its own
//!   span id as the upstream's parent), a missing one started. The request id header
//!   (`x-request-id` unless [`ObsLayer::request_id_header`]) is kept when the client sent a sane
//!   one and passed to the upstream (or the inner service); with
//!   [`ObsLayer::generate_request_ids`] a missing one is made (the trace id, or a new id); the
//!   tower host also returns it on the response with [`ObsLayer::echo_request_id`].
//! - **Metrics** when [`ObsLayer::metrics`] is set; see [`Metrics`] for names and labels.
//!
//! The route label: the proxy host reads a [`RouteLabel`] from the request's extensions, else
//! asks its [`RouteOf`] (the `pingora-tower` proxy's route table); the tower host reads a
//! [`RouteLabel`] or,
//! with the `axum` feature, axum's `MatchedPath` (present under `Router::route_layer`). Never the
//! raw path: its values are unbounded.
//!
//! In the proxy, put this layer outermost: it then sees each upstream head before a retry layer
//! turns a retryable status into an error.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use middlewares::obs::{Metrics, ObsLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let metrics = Metrics::new();
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         ObsLayer::new()
//!             .metrics(metrics.clone())
//!             .generate_request_ids(true)
//!             .echo_request_id(true),
//!     )
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert!(res.headers().contains_key("x-request-id"));
//! assert!(metrics.render().contains("http_server_request_duration_seconds_count"));
//! # }
//! ```

mod access_log;
mod future;
mod handles;
pub mod labels;
mod metrics;
#[cfg(feature = "pingora")]
mod proxy;
pub mod recent;
mod request_line;
pub mod trace;

pub use access_log::{AccessLog, LogAddr};
pub use future::ResponseFuture;
#[cfg(feature = "circuit-breaker")]
pub use metrics::breaker_state_label;
pub use metrics::{
    ActiveGuard, Metrics, ACTIVE_REQUESTS, BACKEND_UP, BREAKER_STATE, BREAKER_STATES,
    BREAKER_TRANSITIONS, BUCKETS, CLIENT_DURATION, RATE_LIMITED, RETRIES, RETRY_BUDGET_EXHAUSTED,
    SERVER_DURATION,
};
#[cfg(feature = "pingora")]
pub use proxy::ObsCtx;
pub(crate) use request_line::RequestLine;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::Layered;

/// Target of the per-request span.
pub const SPAN_TARGET: &str = "pingora_tower::request";
/// Target of the per-attempt events (proxy host).
pub const ATTEMPT_TARGET: &str = "pingora_tower::attempt";
/// Target of the access log events.
pub const ACCESS_LOG_TARGET: &str = "pingora_tower::access";

/// The route a request was matched to, as a metrics label and span field: inserted into the
/// request extensions by whatever routes (an app, or a user's proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLabel(pub Arc<str>);

/// Names a proxied request's route (the `http_route` label and span field) when its extensions
/// carry no [`RouteLabel`]: the `pingora-tower` proxy gives its route table
/// ([`ObsLayer::route_of`]).
#[cfg(feature = "pingora")]
pub trait RouteOf: Send + Sync + std::fmt::Debug {
    /// The route `req` goes to, if any.
    fn route_of(&self, req: &pingora_http::RequestHeader) -> Option<Arc<str>>;
}

/// The [`ObsLayer`]'s service.
pub type Obs<S> = Layered<ObsLayer, S>;

/// Adds a span, an access log line, trace context and request id propagation, and (with
/// [`metrics`](Self::metrics)) Prometheus metrics. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ObsLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Request and attempt times: the CPU's counter unless tokio's clock is paused.
    clock: crate::clock::Clock,
    metrics: Option<Metrics>,
    /// Written straight from the layer, instead of the access-log event.
    access_log: Option<AccessLog>,
    request_id: Option<HeaderName>,
    /// `request_id`'s text for Pingora's `insert_header` (which copies a `HeaderName`'s text on
    /// every call, a shared `Bytes` only once).
    #[cfg(feature = "pingora")]
    request_id_text: Option<bytes::Bytes>,
    echo_request_id: bool,
    generate_request_ids: bool,
    traceparent: bool,
    start_traces: bool,
    #[cfg(feature = "pingora")]
    backends: proxy::BackendLabels,
    #[cfg(feature = "pingora")]
    route_of: Option<Arc<dyn RouteOf>>,
}

impl Default for ObsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ObsLayer {
    /// Span, access log, `traceparent` and `x-request-id`; no metrics.
    pub fn new() -> Self {
        ObsLayer {
            shared: Arc::new(Shared {
                clock: crate::clock::Clock::new(crate::clock::TimeSource::Auto),
                metrics: None,
                access_log: None,
                request_id: Some(trace::X_REQUEST_ID),
                #[cfg(feature = "pingora")]
                request_id_text: Some(bytes::Bytes::from_static(b"x-request-id")),
                echo_request_id: false,
                generate_request_ids: false,
                traceparent: true,
                start_traces: false,
                #[cfg(feature = "pingora")]
                backends: proxy::BackendLabels::default(),
                #[cfg(feature = "pingora")]
                route_of: None,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|s| Shared {
            clock: crate::clock::Clock::new(crate::clock::TimeSource::Auto),
            metrics: s.metrics.clone(),
            access_log: s.access_log.clone(),
            request_id: s.request_id.clone(),
            #[cfg(feature = "pingora")]
            request_id_text: None,
            echo_request_id: s.echo_request_id,
            generate_request_ids: s.generate_request_ids,
            traceparent: s.traceparent,
            start_traces: s.start_traces,
            #[cfg(feature = "pingora")]
            backends: proxy::BackendLabels::default(),
            #[cfg(feature = "pingora")]
            route_of: s.route_of.clone(),
        });
        f(&mut shared);
        #[cfg(feature = "pingora")]
        {
            shared.request_id_text = shared
                .request_id
                .as_ref()
                .map(|n| bytes::Bytes::copy_from_slice(n.as_str().as_bytes()));
        }
        ObsLayer {
            shared: Arc::new(shared),
        }
    }

    /// Records into `metrics` (share the value with the layers' observers and the exporter).
    pub fn metrics(self, metrics: Metrics) -> Self {
        self.with(|s| s.metrics = Some(metrics))
    }

    /// Writes the access log to `log` from the layer itself, one line per request, instead of
    /// emitting the access-log event (target [`ACCESS_LOG_TARGET`]): the same line as
    /// [`AccessLog::layer`] writes for that event, without the event's dispatch and field
    /// visits (the cheaper way when the access log goes to a file anyway).
    pub fn access_log(self, log: AccessLog) -> Self {
        self.with(|s| s.access_log = Some(log))
    }

    /// The request id header (default `x-request-id`); `None` neither reads nor sets one.
    pub fn request_id_header(self, name: Option<HeaderName>) -> Self {
        self.with(|s| s.request_id = name)
    }

    /// Whether the tower host also sets the request id on the response when the inner service
    /// did not (default off, as Envoy's `always_set_request_id_in_response`: it is one more
    /// header on every response). The proxy passes the upstream's response through as is.
    pub fn echo_request_id(self, enabled: bool) -> Self {
        self.with(|s| s.echo_request_id = enabled)
    }

    /// Whether a request without a (sane) request id gets one made here, written into its
    /// upstream request (and its span and access log line). Default off, as in nginx, HAProxy
    /// and tower-http (Envoy makes them): a client's or a load balancer's id is always kept and
    /// passed on, and making one is one more header written into every upstream request, the
    /// same reason [`start_traces`](Self::start_traces) is off.
    pub fn generate_request_ids(self, enabled: bool) -> Self {
        self.with(|s| s.generate_request_ids = enabled)
    }

    /// In the proxy, where a request's route name comes from when its extensions carry no
    /// [`RouteLabel`] (the `pingora-tower` proxy sets its route table here).
    #[cfg(feature = "pingora")]
    pub fn route_of(self, routes: Arc<dyn RouteOf>) -> Self {
        self.with(|s| s.route_of = Some(routes))
    }

    /// Whether a valid incoming `traceparent` is continued and passed on with this hop as the
    /// parent (default on).
    pub fn traceparent(self, enabled: bool) -> Self {
        self.with(|s| s.traceparent = enabled)
    }

    /// Whether a request without a valid `traceparent` starts a new trace, passed on (default
    /// off: an edge proxy usually leaves that to a tracing agent, and each started trace is one
    /// more header written into every upstream request).
    pub fn start_traces(self, enabled: bool) -> Self {
        self.with(|s| s.start_traces = enabled)
    }

    /// The trace context of a request with these headers, per the settings.
    /// The trace context of a request with these headers, per the settings, and the client's
    /// request id if it sent a sane one.
    fn incoming<'h>(
        &self,
        headers: &'h http::HeaderMap,
    ) -> (Option<trace::TraceContext>, Option<&'h http::HeaderValue>) {
        let s = &self.shared;
        let (traceparent, id) =
            trace::two_headers(headers, &trace::TRACEPARENT, s.request_id.as_ref());
        let trace = if s.traceparent {
            traceparent
                .and_then(trace::TraceContext::continued_from)
                .or_else(|| s.start_traces.then(trace::TraceContext::start))
        } else {
            None
        };
        (trace, id.filter(|v| trace::sane_request_id(v)))
    }

    /// The metrics this layer records into, if any.
    pub fn metrics_ref(&self) -> Option<&Metrics> {
        self.shared.metrics.as_ref()
    }
}

impl<S> Layer<S> for ObsLayer {
    type Service = Obs<S>;

    fn layer(&self, inner: S) -> Obs<S> {
        Layered::wrap(self.clone(), inner)
    }
}

/// The route label of a request in the tower host: a shared string, never copied.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Label(Arc<str>),
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
}

impl Route {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Route::Label(r) => r,
            #[cfg(feature = "axum")]
            Route::Matched(m) => m.as_str(),
        }
    }
}

fn tower_route<B>(req: &Request<B>) -> Option<Route> {
    if let Some(RouteLabel(r)) = req.extensions().get::<RouteLabel>() {
        return Some(Route::Label(r.clone()));
    }
    #[cfg(feature = "axum")]
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(Route::Matched(m.clone()));
    }
    None
}

impl<S, B, ResB> Service<Request<B>> for Layered<ObsLayer, S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &self.policy.shared;
        let start = shared.clock.now_nanos();
        let method = labels::method(req.method());
        let route = tower_route(&req);
        let (trace_ctx, client_id) = self.policy.incoming(req.headers());
        let client_id = client_id.cloned();
        if let Some(t) = &trace_ctx {
            // The inner service continues this hop's span.
            req.headers_mut()
                .insert(trace::TRACEPARENT, t.traceparent());
        }
        let request_id = shared.request_id.as_ref().and_then(|name| match client_id {
            Some(v) => Some(trace::RequestId::Client(v)),
            None if shared.generate_request_ids => {
                let id = trace_ctx.map_or_else(trace::new_id, |t| t.trace_id);
                req.headers_mut().insert(name.clone(), trace::id_value(id));
                Some(trace::RequestId::Made(id))
            }
            None => None,
        });
        let span = if !tracing::dispatcher::has_been_set() {
            // No subscriber: skip the macro's fallback to the `log` crate for spans.
            Span::none()
        } else {
            tracing::info_span!(
                target: SPAN_TARGET,
                "request",
                http.request.method = method,
                url.path = req.uri().path(),
                http.route = route.as_ref().map(Route::as_str),
                http.response.status_code = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
                request_id = request_id.as_ref().map(tracing::field::display),
                trace_id = trace_ctx.map(|t| tracing::field::display(trace::TraceId(t.trace_id))),
            )
        };
        let log = (shared.access_log.is_some()
            || tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO))
        .then(|| future::LogFields {
            client: req
                .extensions()
                .get::<std::net::SocketAddr>()
                .copied()
                .or_else(|| client_from_axum(&req)),
            target: req.uri().clone(),
        });
        let inner = if span.is_disabled() {
            self.inner.call(req)
        } else {
            let _enter = span.enter();
            self.inner.call(req)
        };
        // Counted in once the future that counts it out exists (a `call` that panics leaves
        // the gauge as it was).
        if let Some(m) = &shared.metrics {
            m.request_began();
        }
        ResponseFuture::new(
            inner,
            future::Finish {
                shared: self.policy.shared.clone(),
                span,
                start,
                method,
                route,
                request_id,
                log,
            },
        )
    }
}

#[cfg(feature = "axum")]
fn client_from_axum<B>(req: &Request<B>) -> Option<std::net::SocketAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(not(feature = "axum"))]
fn client_from_axum<B>(_req: &Request<B>) -> Option<std::net::SocketAddr> {
    None
}
