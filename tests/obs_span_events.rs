//! The layers' decisions in a proxy are events inside the request's span (the `obs` layer's
//! `request` span): a rate limit rejection, a breaker skipping an open backend and answering
//! `503` and opening, a retry of a `503` granted or refused by the budget, a deadline's `504`,
//! each found under the span of the request that caused it, over real sockets. A policy whose
//! span is disabled changes nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use http::Request;
use pingora_tower::middleware::circuit_breaker::CircuitBreakerLayer;
use pingora_tower::middleware::obs::Metrics;
use pingora_tower::middleware::proxy_host::ProxyPolicy;
use pingora_tower::middleware::rate_limit::RateLimitLayer;
use pingora_tower::middleware::retry::RetryLayer;
use pingora_tower::middleware::{self, Layered};
use pingora_tower::proxy::{PingoraProxy, Route, Upstream};
use pingora_tower_test_support::*;
use tower::layer::layer_fn;
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One event seen: its target, its message, and the `request_id` of the `request` span it is
/// inside (`None`: in no request span).
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    message: String,
    request_id: Option<String>,
}

/// A `tracing_subscriber::Layer` keeping every event with the request span it belongs to.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

/// The `request_id` recorded on a `request` span, kept in the span's extensions.
struct RequestId(Option<String>);

/// Collects one field's value as text.
struct Field<'a> {
    name: &'static str,
    value: &'a mut Option<String>,
}

impl tracing::field::Visit for Field<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.name {
            *self.value = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == self.name {
            *self.value = Some(value.to_owned());
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "request" {
            return;
        }
        let mut value = None;
        attrs.record(&mut Field {
            name: "request_id",
            value: &mut value,
        });
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(RequestId(value));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut message = None;
        event.record(&mut Field {
            name: "message",
            value: &mut message,
        });
        // The explicit parent, or else the span entered where the event fired, and up.
        let request_id = ctx.event_span(event).and_then(|span| {
            span.scope()
                .find_map(|s| s.extensions().get::<RequestId>().map(|r| r.0.clone()))
                .flatten()
        });
        self.0.lock().unwrap().push(Seen {
            target: event.metadata().target().to_owned(),
            message: message.unwrap_or_default(),
            request_id,
        });
    }
}

impl Capture {
    /// Installs this layer for the current thread (the current-thread test runtime runs the
    /// proxy on it) until the guard drops.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()));
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// The events whose target starts with `target` and whose message contains `message`.
    fn find(&self, target: &str, message: &str) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target.starts_with(target) && s.message.contains(message))
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// The capture installed on this thread, and an upstream answering `statuses` first.
async fn setup(statuses: &[u16]) -> (Capture, tracing::subscriber::DefaultGuard, ScriptedUpstream) {
    let capture = Capture::default();
    let guard = capture.install();
    let up = ScriptedUpstream::start().await;
    up.script.queue(statuses);
    (capture, guard, up)
}

/// A proxy with the `obs` layer (metrics on) and `layer`, routing `/` to `up`.
macro_rules! proxy_with {
    ($up:expr, $layer:expr) => {
        PingoraProxy::builder("127.0.0.1:0")
            .routes([Route::prefix("/", Upstream::new($up.url()))])
            .metrics(Metrics::new())
            .middleware($layer)
            .spawn()
            .await
            .unwrap()
    };
}

/// `GET path` with the request id `id`, bounded by the hang guard.
async fn get_with_id(addr: SocketAddr, path: &str, id: &str) -> StatusCode {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .header("x-request-id", id)
        .body(empty())
        .unwrap();
    let res = tokio::time::timeout(HANG_GUARD, send(addr, req))
        .await
        .expect("answered");
    let status = res.status();
    body_text(res).await;
    status
}

/// Asserts that at least one event matching `target`/`message` was seen and that every one of
/// them is inside the span of request `id`.
fn assert_inside(capture: &Capture, target: &str, message: &str, id: &str) {
    let found = capture.find(target, message);
    assert!(
        !found.is_empty(),
        "no `{message}` event from {target}: {:#?}",
        capture.all()
    );
    for seen in found {
        assert_eq!(
            seen.request_id.as_deref(),
            Some(id),
            "`{message}` is not inside the span of request {id}: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_rate_limit_rejection_is_inside_the_rejected_requests_span() {
    let (capture, _guard, up) = setup(&[]).await;
    let limiter = RateLimitLayer::builder(1, Duration::from_secs(60))
        .build()
        .unwrap();
    let proxy = proxy_with!(up, limiter);
    let addr = proxy.local_addr();
    assert_eq!(get_with_id(addr, "/a", "rl-1").await, StatusCode::OK);
    assert_eq!(
        get_with_id(addr, "/a", "rl-2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_inside(&capture, "middlewares::rate_limit", "rejected", "rl-2");
    proxy.shutdown().await;
    up.shutdown().await;
}

#[tokio::test]
async fn an_open_breakers_skip_and_503_are_inside_the_requests_span() {
    let (capture, _guard, up) = setup(&[]).await;
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    let handle = breaker.handle();
    let proxy = proxy_with!(up, breaker);
    handle.force_open(&up.breaker_key());
    let addr = proxy.local_addr();
    assert_eq!(
        get_with_id(addr, "/a", "cb-1").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_inside(
        &capture,
        "middlewares::circuit_breaker",
        "skipping backend",
        "cb-1",
    );
    assert_inside(
        &capture,
        "middlewares::circuit_breaker",
        "every backend",
        "cb-1",
    );
    proxy.shutdown().await;
    up.shutdown().await;
}

#[tokio::test]
async fn a_breaker_opening_is_inside_the_span_of_the_request_that_opened_it() {
    let (capture, _guard, up) = setup(&[500]).await;
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let proxy = proxy_with!(up, breaker);
    let addr = proxy.local_addr();
    assert_eq!(
        get_with_id(addr, "/a", "cb-open").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let key = up.breaker_key();
    assert_eq!(
        handle.state(&key),
        Some(pingora_tower::middleware::circuit_breaker::State::Open)
    );
    assert_inside(
        &capture,
        "middlewares::circuit_breaker",
        "circuit breaker opened",
        "cb-open",
    );
    proxy.shutdown().await;
    up.shutdown().await;
}

#[tokio::test]
async fn a_retry_of_a_503_is_inside_the_requests_span() {
    let (capture, _guard, up) = setup(&[503]).await;
    let proxy = proxy_with!(up, middleware::retry(1));
    let addr = proxy.local_addr();
    assert_eq!(get_with_id(addr, "/a", "rt-1").await, StatusCode::OK);
    assert_inside(&capture, "middlewares::retry", "retrying", "rt-1");
    assert_inside(&capture, "middlewares::retry", "retryable status", "rt-1");
    proxy.shutdown().await;
    up.shutdown().await;
}

#[tokio::test]
async fn a_retry_the_budget_refuses_is_inside_the_requests_span() {
    let (capture, _guard, up) = setup(&[503]).await;
    // No ratio and no floor: the budget refuses every retry.
    let retry = RetryLayer::builder(1).budget(0.0, 0).build().unwrap();
    let proxy = proxy_with!(up, retry);
    let addr = proxy.local_addr();
    assert_eq!(
        get_with_id(addr, "/a", "rb-1").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_inside(&capture, "middlewares::retry", "budget exhausted", "rb-1");
    assert!(
        !capture.all().iter().any(|s| s.message == "retrying"),
        "{:#?}",
        capture.all()
    );
    proxy.shutdown().await;
    up.shutdown().await;
}

#[tokio::test]
async fn a_deadlines_504_is_inside_the_requests_span() {
    let (capture, _guard, up) = setup(&[]).await;
    let proxy = proxy_with!(up, middleware::timeout(100));
    let addr = proxy.local_addr();
    assert_eq!(
        get_with_id(addr, "/slow", "to-1").await,
        StatusCode::GATEWAY_TIMEOUT
    );
    up.script.release_all();
    assert_inside(&capture, "middlewares::timeout", "deadline passed", "to-1");
    proxy.shutdown().await;
    up.shutdown().await;
}

/// A policy whose span is disabled (here [`tracing::Span::none`]): phases run as without one.
struct DisabledSpan;

impl ProxyPolicy for DisabledSpan {
    type Ctx = tracing::Span;

    fn new_ctx(&self) -> tracing::Span {
        tracing::Span::none()
    }

    fn span<'a>(&self, ctx: &'a tracing::Span) -> Option<&'a tracing::Span> {
        Some(ctx)
    }
}

#[tokio::test]
async fn a_disabled_span_changes_nothing() {
    let (capture, _guard, up) = setup(&[503]).await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(layer_fn(|inner| Layered::wrap(DisabledSpan, inner)))
        .middleware(middleware::rate_limit(2, 60_000))
        .middleware(middleware::retry(1))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    // A 503 retried into a 200, then a rejection: the same answers as with no span.
    assert_eq!(get_with_id(addr, "/a", "ds-1").await, StatusCode::OK);
    assert_eq!(get_with_id(addr, "/a", "ds-2").await, StatusCode::OK);
    assert_eq!(
        get_with_id(addr, "/a", "ds-3").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let retried = capture.find("middlewares::retry", "retrying");
    assert_eq!(retried.len(), 1, "{:#?}", capture.all());
    assert!(capture.all().iter().all(|s| s.request_id.is_none()));
    proxy.shutdown().await;
    up.shutdown().await;
}
