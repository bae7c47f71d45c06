//! The tower host's response future: records the request when the inner service answers.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use std::sync::Arc;
use std::time::Duration;
use tracing::Span;

use super::access_log::millis_f64;
use super::trace::RequestId;
use super::{labels, Route, Shared, ACCESS_LOG_TARGET};

/// What the future needs once the response head is there.
#[derive(Debug)]
pub(crate) struct Finish {
    pub(crate) shared: Arc<Shared>,
    pub(crate) span: Span,
    /// On `shared.clock`. The request is in `shared.metrics`' active gauge until this drops.
    pub(crate) start: u64,
    pub(crate) method: &'static str,
    pub(crate) route: Option<Route>,
    pub(crate) request_id: Option<RequestId>,
    /// Kept only when the access log is enabled.
    pub(crate) log: Option<LogFields>,
}

/// The access log's fields taken from the request.
#[derive(Debug)]
pub(crate) struct LogFields {
    pub(crate) client: Option<SocketAddr>,
    pub(crate) target: http::Uri,
}

pin_project! {
    /// Response future of [`Obs`](super::Obs): the inner future, polled inside the request's
    /// span. Dropped before the response (the client went away), the request is recorded
    /// with status `499`, as the proxy host and nginx record it.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        finish: Option<Finish>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(finish) = this.project().finish.take() {
                finish.done(CLIENT_CLOSED);
            }
        }
    }
}

/// nginx's "client closed request".
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
};

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
        let mut result = match this.finish.as_ref().map(|f| &f.span) {
            Some(span) if !span.is_disabled() => {
                let _enter = span.enter();
                ready!(this.inner.poll(cx))
            }
            _ => ready!(this.inner.poll(cx)),
        };
        if let Some(finish) = this.finish.take() {
            let status = match &mut result {
                Ok(res) => {
                    finish.echo_id(res);
                    res.status()
                }
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            finish.done(status);
        }
        Poll::Ready(result)
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // However the request ended, cancelled included.
        if let Some(m) = &self.shared.metrics {
            m.request_ended();
        }
    }
}

impl Finish {
    fn echo_id<B>(&self, res: &mut Response<B>) {
        let shared = &self.shared;
        let name = shared
            .request_id
            .as_ref()
            .filter(|_| shared.echo_request_id);
        if let (Some(name), Some(id)) = (name, &self.request_id) {
            if !res.headers().contains_key(name) {
                res.headers_mut().insert(name.clone(), id.header_value());
            }
        }
    }

    fn done(self, status: StatusCode) {
        let clock = &self.shared.clock;
        let now = clock.now_nanos();
        let latency = Duration::from_nanos(now.saturating_sub(self.start));
        if let Some(metrics) = &self.shared.metrics {
            metrics.record_request(
                self.method,
                labels::status(status),
                self.route.as_ref().map_or("", Route::as_str),
                latency,
                clock.instant(now),
            );
        }
        if !self.span.is_disabled() {
            self.span
                .record("http.response.status_code", status.as_u16())
                .record("latency_ms", millis_f64(latency));
        }
        if let (Some(log), Some(access_log)) = (&self.log, &self.shared.access_log) {
            access_log.write_request(&super::RequestLine {
                client: log.client,
                method: self.method,
                target: &log.target,
                status: status.as_u16(),
                bytes: None,
                duration: latency,
                upstream: None,
                attempts: None,
                request_id: self.request_id.as_ref(),
                error: None,
            });
        } else if let Some(log) = &self.log {
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                parent: &self.span,
                client = log.client.map(|a| tracing::field::display(super::LogAddr(a))),
                method = self.method,
                target = tracing::field::display(&log.target),
                status = status.as_u16(),
                duration_ms = millis_f64(latency),
                request_id = self.request_id.as_ref().map(tracing::field::display),
                "request"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Request;
    use tower::{Layer, ServiceBuilder, ServiceExt};

    use crate::obs::trace::X_REQUEST_ID;
    use crate::obs::ObsLayer;

    async fn call(layer: ObsLayer, req: Request<String>) -> (Option<String>, Response<String>) {
        let svc =
            ServiceBuilder::new()
                .layer(layer)
                .service_fn(|req: Request<String>| async move {
                    let seen = req
                        .headers()
                        .get(X_REQUEST_ID)
                        .map(|v| v.to_str().unwrap().to_owned());
                    Ok::<_, Infallible>(Response::new(seen.unwrap_or_default()))
                });
        let res = svc.oneshot(req).await.unwrap();
        let seen = Some(res.body().clone()).filter(|s| !s.is_empty());
        (seen, res)
    }

    use super::Response;

    #[tokio::test]
    async fn a_made_id_reaches_the_inner_service_and_the_response_only_when_asked() {
        let made = || ObsLayer::new().generate_request_ids(true);
        let (seen, res) = call(made(), Request::new(String::new())).await;
        let seen = seen.expect("the inner service sees an id");
        assert_eq!(seen.len(), 32);
        assert!(!res.headers().contains_key(X_REQUEST_ID));

        let (seen, res) = call(made().echo_request_id(true), Request::new(String::new())).await;
        assert_eq!(res.headers()[X_REQUEST_ID], seen.unwrap().as_str());

        let req = Request::builder()
            .header(X_REQUEST_ID, "abc")
            .body(String::new())
            .unwrap();
        let (seen, res) = call(made().echo_request_id(true), req).await;
        assert_eq!(seen.as_deref(), Some("abc"));
        assert_eq!(res.headers()[X_REQUEST_ID], "abc");
    }

    #[tokio::test]
    async fn by_default_only_a_client_id_is_passed_on() {
        let layer = || ObsLayer::new().echo_request_id(true);
        let (seen, res) = call(layer(), Request::new(String::new())).await;
        assert_eq!(seen, None);
        assert!(!res.headers().contains_key(X_REQUEST_ID));
        let req = Request::builder()
            .header(X_REQUEST_ID, "abc")
            .body(String::new())
            .unwrap();
        let (seen, res) = call(layer(), req).await;
        assert_eq!(seen.as_deref(), Some("abc"));
        assert_eq!(res.headers()[X_REQUEST_ID], "abc");
    }

    #[tokio::test]
    async fn a_request_is_active_until_it_ends_or_is_cancelled() {
        use crate::obs::Metrics;
        use tower::Service;
        let metrics = Metrics::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = std::sync::Mutex::new(Some(rx));
        let mut svc = ObsLayer::new()
            .metrics(metrics.clone())
            .layer(tower::service_fn(move |_req: Request<String>| {
                let rx = rx.lock().unwrap().take();
                async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    Ok::<_, Infallible>(Response::new(String::new()))
                }
            }));
        let pending = svc.call(Request::new(String::new()));
        assert_eq!(metrics.active_requests(), 1);
        tx.send(()).unwrap();
        pending.await.unwrap();
        assert_eq!(metrics.active_requests(), 0);
        let cancelled = svc.call(Request::new(String::new()));
        assert_eq!(metrics.active_requests(), 1);
        drop(cancelled);
        assert_eq!(metrics.active_requests(), 0);
        // Each counted once, the cancelled one as 499.
        let text = metrics.render();
        for status in ["200", "499"] {
            let count = text
                .lines()
                .find(|l| {
                    l.starts_with("http_server_request_duration_seconds_count")
                        && l.contains(&format!("http_response_status_code=\"{status}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no {status} count in {text}"));
            assert_eq!(count, "1", "{status}: {text}");
        }
    }
}
