//! The tower host's response future: records the request when the inner service answers.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::Span;

use super::{labels, ActiveGuard, Metrics, ACCESS_LOG_TARGET};

/// What the future needs once the response head is there.
#[derive(Debug)]
pub(crate) struct Finish {
    pub(crate) span: Span,
    pub(crate) start: Instant,
    pub(crate) metrics: Option<Metrics>,
    pub(crate) _active: Option<ActiveGuard>,
    pub(crate) method: &'static str,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) request_id: Option<(HeaderName, HeaderValue)>,
    pub(crate) client: Option<SocketAddr>,
    /// The request target, kept only when the access log is enabled.
    pub(crate) target: Option<String>,
}

pin_project! {
    /// Response future of [`Obs`](super::Obs): the inner future, polled inside the request's
    /// span.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        finish: Option<Finish>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, finish: Finish) -> Self {
        ResponseFuture {
            inner,
            finish: Some(finish),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _enter = this.finish.as_ref().map(|f| f.span.enter());
            ready!(this.inner.poll(cx))
        };
        let mut result = result;
        if let Some(finish) = this.finish.take() {
            let status = match &mut result {
                Ok(res) => {
                    super::set_response_id(res, &finish.request_id);
                    res.status()
                }
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            finish.done(status);
        }
        Poll::Ready(result)
    }
}

impl Finish {
    fn done(self, status: StatusCode) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(self.start);
        let status_label = labels::status(status);
        if let Some(m) = &self.metrics {
            m.record_request(
                self.method,
                status_label,
                self.route.as_deref().unwrap_or(""),
                latency,
                now,
            );
        }
        let latency_ms = latency.as_secs_f64() * 1e3;
        self.span
            .record("http.response.status_code", status.as_u16())
            .record("latency_ms", latency_ms);
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            parent: &self.span,
            client = self.client.map(tracing::field::display),
            method = self.method,
            target = self.target.as_deref(),
            status = status.as_u16(),
            duration_ms = latency_ms,
            request_id = self.request_id.as_ref().and_then(|(_, v)| v.to_str().ok()),
            "request"
        );
    }
}
