//! The admin listener of a proxy: `/metrics` (Prometheus text), `/status` (JSON) and `/` (an
//! HTML status page), served by [`ServeTower`](crate::ServeTower) on its own address.
//!
//! Turned on by [`ProxyBuilder::admin`](crate::proxy::ProxyBuilder::admin); the proxy then
//! records the `obs` layer's metrics (see [`middlewares::obs::Metrics`]) itself. Bind it to
//! loopback or a private network: it tells whoever asks which backends exist and how they fare.
//! With [`ProxyBuilder::admin_breaker_control`](crate::proxy::ProxyBuilder::admin_breaker_control)
//! it also takes `POST /breakers/{key}/open|closed|reset` (see `control`).

mod control;
mod json;
mod page;
mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use middlewares::obs::Metrics;
use tokio::time::Instant;

use crate::proxy::RoutingProxy;
use crate::PingoraBody;

pub use status::{BackendView, RouteView, StatusView};

/// What the admin pages read: the proxy's metrics, its backends and route names.
#[derive(Clone, Debug)]
pub(crate) struct Admin {
    inner: Arc<Inner>,
    /// Whether `POST /breakers/..` may change a breaker.
    breaker_control: bool,
}

#[derive(Debug)]
struct Inner {
    metrics: Metrics,
    base: RoutingProxy,
    route_labels: Arc<[Arc<str>]>,
    started: Instant,
}

impl Admin {
    pub(crate) fn new(metrics: Metrics, base: RoutingProxy, route_labels: Arc<[Arc<str>]>) -> Self {
        Admin {
            inner: Arc::new(Inner {
                metrics,
                base,
                route_labels,
                started: Instant::now(),
            }),
            breaker_control: false,
        }
    }

    /// Allows (or not) forcing breakers through `POST /breakers/{key}/..`.
    pub(crate) fn breaker_control(mut self, enabled: bool) -> Self {
        self.breaker_control = enabled;
        self
    }

    /// Sets the backend health gauges from the balancers' current view.
    fn refresh(&self) {
        let inner = &*self.inner;
        for b in inner.base.backends() {
            let upstream = inner.route_labels.get(b.route).map_or("", |l| &**l);
            inner
                .metrics
                .set_backend_up(upstream, &b.addr.to_string(), b.healthy);
        }
    }

    /// The status view behind `/status` and `/`.
    pub(crate) fn status(&self) -> StatusView {
        self.refresh();
        status::collect(
            &self.inner.metrics,
            &self.inner.base,
            &self.inner.route_labels,
            self.inner.started,
        )
    }

    /// Answers one admin request.
    pub(crate) fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if let Some(rest) = req.uri().path().strip_prefix(control::PREFIX) {
            return control::answer(
                &self.inner.metrics,
                self.breaker_control,
                req.method(),
                req.headers(),
                req.extensions().get::<std::net::SocketAddr>().copied(),
                rest,
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET only\n".into(),
                "text/plain",
            );
        }
        match req.uri().path() {
            "/metrics" => {
                self.refresh();
                text(
                    StatusCode::OK,
                    self.inner.metrics.render(),
                    Metrics::CONTENT_TYPE,
                )
            }
            "/status" => text(StatusCode::OK, self.status().to_json(), "application/json"),
            "/" => text(
                StatusCode::OK,
                page::render(&self.status(), &self.inner.metrics),
                "text/html; charset=utf-8",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /status or /metrics\n".into(),
                "text/plain",
            ),
        }
    }
}

impl tower::Service<Request<PingoraBody>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<PingoraBody>) -> Self::Future {
        std::future::ready(Ok(self.answer(&req)))
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
