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
//!   one, made from the trace id otherwise, passed to the upstream (or the inner service) and
//!   returned on the response by the tower host.
//! - **Metrics** when [`ObsLayer::metrics`] is set; see [`Metrics`] for names and labels.
//!
//! The route label: the proxy host reads a [`RouteLabel`] from the request's extensions (the
//! `pingora-tower` proxy inserts its route's name); the tower host reads a [`RouteLabel`] or,
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
//!     .layer(ObsLayer::new().metrics(metrics.clone()))
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
pub mod labels;
mod metrics;
#[cfg(feature = "pingora")]
mod proxy;
pub mod recent;
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

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::Layered;

/// Target of the per-request span.
pub const SPAN_TARGET: &str = "pingora_tower::request";
/// Target of the per-attempt events (proxy host).
pub const ATTEMPT_TARGET: &str = "pingora_tower::attempt";
/// Target of the access log events.
pub const ACCESS_LOG_TARGET: &str = "pingora_tower::access";

/// The route a request was matched to, as a metrics label and span field: inserted into the
/// request extensions by whatever routes (the `pingora-tower` proxy, or an app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLabel(pub Arc<str>);

/// The [`ObsLayer`]'s service.
pub type Obs<S> = Layered<ObsLayer, S>;

/// Adds a span, an access log line, trace context and request id propagation, and (with
/// [`metrics`](Self::metrics)) Prometheus metrics. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ObsLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    metrics: Option<Metrics>,
    request_id: Option<HeaderName>,
    traceparent: bool,
    start_traces: bool,
    #[cfg(feature = "pingora")]
    backends: proxy::BackendLabels,
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
                metrics: None,
                request_id: Some(trace::X_REQUEST_ID),
                traceparent: true,
                start_traces: false,
                #[cfg(feature = "pingora")]
                backends: proxy::BackendLabels::default(),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|s| Shared {
            metrics: s.metrics.clone(),
            request_id: s.request_id.clone(),
            traceparent: s.traceparent,
            start_traces: s.start_traces,
            #[cfg(feature = "pingora")]
            backends: proxy::BackendLabels::default(),
        });
        f(&mut shared);
        ObsLayer {
            shared: Arc::new(shared),
        }
    }

    /// Records into `metrics` (share the value with the layers' observers and the exporter).
    pub fn metrics(self, metrics: Metrics) -> Self {
        self.with(|s| s.metrics = Some(metrics))
    }

    /// The request id header (default `x-request-id`); `None` neither reads nor sets one.
    pub fn request_id_header(self, name: Option<HeaderName>) -> Self {
        self.with(|s| s.request_id = name)
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
    fn trace_of(&self, headers: &http::HeaderMap) -> Option<trace::TraceContext> {
        let s = &self.shared;
        if !s.traceparent {
            return None;
        }
        trace::TraceContext::continued(headers)
            .or_else(|| s.start_traces.then(trace::TraceContext::start))
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

/// The route label of a request in the tower host.
fn tower_route<B>(req: &Request<B>) -> Option<Arc<str>> {
    if let Some(RouteLabel(r)) = req.extensions().get::<RouteLabel>() {
        return Some(r.clone());
    }
    #[cfg(feature = "axum")]
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(Arc::from(m.as_str()));
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
        let start = Instant::now();
        let active = shared.metrics.as_ref().map(Metrics::request_started);
        let method = labels::method(req.method());
        let route = tower_route(&req);
        let trace_ctx = self.policy.trace_of(req.headers());
        if let Some(t) = &trace_ctx {
            // The inner service continues this hop's span.
            req.headers_mut()
                .insert(trace::TRACEPARENT, t.traceparent());
        }
        let request_id = shared.request_id.as_ref().map(|name| {
            let (id, made) = trace::request_id(req.headers(), name, || {
                trace::id_value(trace_ctx.map_or_else(trace::new_id, |t| t.trace_id))
            });
            if made {
                req.headers_mut().insert(name.clone(), id.clone());
            }
            (name.clone(), id)
        });
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "request",
            http.request.method = method,
            url.path = req.uri().path(),
            http.route = route.as_deref(),
            http.response.status_code = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            request_id = request_id.as_ref().and_then(|(_, id)| id.to_str().ok()),
            trace_id = trace_ctx.map(|t| tracing::field::display(trace::TraceId(t.trace_id))),
        );
        let client = req
            .extensions()
            .get::<std::net::SocketAddr>()
            .copied()
            .or_else(|| client_from_axum(&req));
        let target = if tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO) {
            Some(req.uri().to_string())
        } else {
            None
        };
        let inner = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        ResponseFuture::new(
            inner,
            future::Finish {
                span,
                start,
                metrics: shared.metrics.clone(),
                _active: active,
                method,
                route,
                request_id,
                client,
                target,
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

/// The request id header value of a response, for the tower host.
pub(crate) fn set_response_id<B>(res: &mut Response<B>, id: &Option<(HeaderName, HeaderValue)>) {
    if let Some((name, value)) = id {
        if !res.headers().contains_key(name) {
            res.headers_mut().insert(name.clone(), value.clone());
        }
    }
}
