//! Behaviour tests of `middlewares::retry` on a paused tokio clock.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use middlewares::retry::{ReplayBody, Retry, RetryBuilder, RetryLayer};
use tokio::time::{sleep, Instant};
use tower::{Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the inner service saw on one call.
#[derive(Debug, Clone)]
struct Seen {
    at: Duration,
    method: Method,
    body: Bytes,
}

/// What the inner service does on one call.
#[derive(Clone)]
enum Step {
    Status(u16),
    StatusWith(u16, &'static str, &'static str),
    Fail,
    Hang,
}

/// A cloneable inner service that answers from `script` (the last step repeats), reads the whole
/// request body first, and records every call.
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Step>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    start: Instant,
    read_body: bool,
}

impl Scripted {
    fn new(script: Vec<Step>) -> Self {
        Scripted {
            script: Arc::new(script),
            seen: Arc::default(),
            start: Instant::now(),
            read_body: true,
        }
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn call_offsets(&self) -> Vec<Duration> {
        self.seen().into_iter().map(|s| s.at).collect()
    }
}

impl<B> Service<Request<ReplayBody<B>>> for Scripted
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let at = Instant::now() - this.start;
            let method = req.method().clone();
            let body = if this.read_body {
                req.into_body()
                    .collect()
                    .await
                    .map_err(Into::into)?
                    .to_bytes()
            } else {
                Bytes::new()
            };
            let n = {
                let mut seen = this.seen.lock().unwrap();
                seen.push(Seen { at, method, body });
                seen.len() - 1
            };
            let step = this.script[n.min(this.script.len() - 1)].clone();
            let mut res = Response::new(format!("attempt {n}"));
            match step {
                Step::Status(s) => *res.status_mut() = StatusCode::from_u16(s).unwrap(),
                Step::StatusWith(s, name, value) => {
                    *res.status_mut() = StatusCode::from_u16(s).unwrap();
                    res.headers_mut().insert(name, value.parse().unwrap());
                }
                Step::Fail => return Err(format!("attempt {n} failed").into()),
                Step::Hang => {
                    sleep(Duration::from_secs(3600)).await;
                }
            }
            Ok(res)
        })
    }
}

fn req(method: Method, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn get() -> Request<Full<Bytes>> {
    req(Method::GET, "")
}

/// A layer with a deterministic schedule (10 ms doubling, no jitter) and a budget large
/// enough not to interfere.
fn layer(max_retries: u32) -> RetryLayer {
    tuned(max_retries).build().unwrap()
}

/// The builder of [`layer`], for tests that change one more setting.
fn tuned(max_retries: u32) -> RetryBuilder {
    RetryLayer::builder(max_retries)
        .backoff_base(Duration::from_millis(10))
        .budget(1.0, 1_000)
        .jitter(false)
}

async fn send<B>(svc: &mut Retry<Scripted>, req: Request<B>) -> Result<Response<String>, BoxError>
where
    Scripted: Service<Request<ReplayBody<B>>, Response = Response<String>, Error = BoxError>,
    B: http_body::Body,
{
    svc.ready().await?.call(req).await
}

#[tokio::test(start_paused = true)]
async fn get_503_503_200_is_retried_to_success() {
    let inner = Scripted::new(vec![
        Step::Status(503),
        Step::Status(503),
        Step::Status(200),
    ]);
    let mut svc = layer(2).layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "attempt 2");
    assert_eq!(inner.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn every_idempotent_method_is_retried() {
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        let inner = Scripted::new(vec![Step::Status(502), Step::Status(204)]);
        let mut svc = layer(1).layer(inner.clone());
        let res = send(&mut svc, req(method.parse().unwrap(), ""))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{method}");
        assert_eq!(inner.calls(), 2, "{method}");
    }
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried() {
    for method in [Method::POST, Method::PATCH] {
        let inner = Scripted::new(vec![Step::Status(503), Step::Status(200)]);
        let mut svc = layer(2).layer(inner.clone());
        let res = send(&mut svc, req(method.clone(), "x")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{method}");
        assert_eq!(inner.calls(), 1, "{method}");
    }
}

fn keyed_post(body: &'static str) -> Request<Full<Bytes>> {
    let mut r = req(Method::POST, body);
    r.headers_mut()
        .insert("idempotency-key", "8e03978e-40d5".parse().unwrap());
    r
}

#[tokio::test(start_paused = true)]
async fn post_with_idempotency_key_is_retried_only_when_enabled() {
    // Key present, option off (the default): sent once.
    let inner = Scripted::new(vec![Step::Status(503), Step::Status(201)]);
    let mut svc = layer(2).layer(inner.clone());
    let res = send(&mut svc, keyed_post("order")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 1);

    // Option on, no key: sent once.
    let inner = Scripted::new(vec![Step::Status(503), Step::Status(201)]);
    let mut svc = tuned(2)
        .retry_with_idempotency_key(true)
        .build()
        .unwrap()
        .layer(inner.clone());
    let res = send(&mut svc, req(Method::POST, "order")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 1);

    // Option on and key present: retried with the same body.
    let inner = Scripted::new(vec![Step::Status(503), Step::Status(201)]);
    let mut svc = tuned(2)
        .retry_with_idempotency_key(true)
        .build()
        .unwrap()
        .layer(inner.clone());
    let res = send(&mut svc, keyed_post("order")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let seen = inner.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.method == Method::POST && s.body == "order"));
}

#[tokio::test(start_paused = true)]
async fn error_then_success() {
    let inner = Scripted::new(vec![Step::Fail, Step::Status(200)]);
    let mut svc = layer(1).layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_return_the_last_response() {
    let inner = Scripted::new(vec![
        Step::Status(502),
        Step::Status(503),
        Step::Status(504),
    ]);
    let mut svc = layer(2).layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.body(), "attempt 2");
    assert_eq!(inner.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_return_the_last_error() {
    let inner = Scripted::new(vec![Step::Fail]);
    let mut svc = layer(3).layer(inner.clone());
    let err = send(&mut svc, get()).await.unwrap_err();
    assert_eq!(err.to_string(), "attempt 3 failed");
    assert_eq!(inner.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_status_passes_through() {
    let inner = Scripted::new(vec![Step::Status(500), Step::Status(200)]);
    let mut svc = layer(2).layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(inner.calls(), 1);

    // ... unless configured.
    let inner = Scripted::new(vec![Step::Status(500), Step::Status(200)]);
    let mut svc = tuned(2)
        .retry_on_statuses([StatusCode::INTERNAL_SERVER_ERROR])
        .build()
        .unwrap()
        .layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn zero_max_retries_never_retries() {
    let inner = Scripted::new(vec![Step::Status(503), Step::Status(200)]);
    let mut svc = middlewares::retry(0).layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn backoff_without_jitter_follows_the_exact_schedule() {
    let layer = RetryLayer::builder(5)
        .backoff_base(Duration::from_millis(100))
        .backoff_cap(Duration::from_millis(300))
        .budget(1.0, 1_000)
        .jitter(false)
        .build()
        .unwrap();
    let inner = Scripted::new(vec![Step::Status(503)]);
    let mut svc = layer.layer(inner.clone());
    let start = Instant::now();
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Delays 100, 200, 300 (capped), 300, 300 ms.
    let ms = |v: &[u64]| {
        v.iter()
            .map(|&m| Duration::from_millis(m))
            .collect::<Vec<_>>()
    };
    assert_eq!(inner.call_offsets(), ms(&[0, 100, 300, 600, 900, 1200]));
    assert_eq!(start.elapsed(), Duration::from_millis(1200));
}

#[tokio::test(start_paused = true)]
async fn backoff_with_jitter_stays_under_the_ceiling() {
    let layer = RetryLayer::builder(4)
        .backoff_base(Duration::from_millis(100))
        .backoff_cap(Duration::from_millis(300))
        .budget(1.0, 1_000)
        .build()
        .unwrap();
    let mut total = Duration::ZERO;
    for _ in 0..20 {
        let inner = Scripted::new(vec![Step::Status(503)]);
        let mut svc = layer.clone().layer(inner.clone());
        send(&mut svc, get()).await.unwrap();
        let at = inner.call_offsets();
        assert_eq!(at.len(), 5);
        for (n, pair) in at.windows(2).enumerate() {
            let ceiling = Duration::from_millis([100, 200, 300, 300][n]);
            // +1 ms: the paused clock rounds a timer to the next millisecond.
            assert!(
                pair[1] - pair[0] <= ceiling + Duration::from_millis(1),
                "{at:?}"
            );
        }
        total += at[4];
    }
    // Without jitter 20 runs take 20 × 900 ms; jitter spreads delays over [0, ceiling].
    assert!(total < Duration::from_millis(20 * 900), "{total:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_backoff() {
    let inner = Scripted::new(vec![
        Step::StatusWith(503, "retry-after", "2"),
        Step::Status(200),
    ]);
    let mut svc = layer(2).layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        inner.call_offsets(),
        [Duration::ZERO, Duration::from_secs(2)]
    );

    // On 429 too, once 429 is retryable.
    let inner = Scripted::new(vec![
        Step::StatusWith(429, "retry-after", "1"),
        Step::Status(200),
    ]);
    let mut svc = tuned(2)
        .retry_on_statuses([
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ])
        .build()
        .unwrap()
        .layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        inner.call_offsets(),
        [Duration::ZERO, Duration::from_secs(1)]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_above_the_cap_returns_the_response() {
    let inner = Scripted::new(vec![
        Step::StatusWith(503, "retry-after", "6"),
        Step::Status(200),
    ]);
    let mut svc = tuned(2)
        .max_retry_after(Duration::from_secs(5))
        .build()
        .unwrap()
        .layer(inner.clone());
    let start = Instant::now();
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "6");
    assert_eq!(inner.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);

    // Exactly at the cap is honoured.
    let inner = Scripted::new(vec![
        Step::StatusWith(503, "retry-after", "5"),
        Step::Status(200),
    ]);
    let mut svc = layer(2).layer(inner.clone());
    assert_eq!(
        send(&mut svc, get()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(inner.call_offsets()[1], Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn budget_stops_a_retry_storm() {
    // ratio 0.1, no floor: 100 requests deposit 100 × 0.1 = 10 retries, whatever max_retries.
    let layer = RetryLayer::builder(3)
        .budget(0.1, 0)
        .jitter(false)
        .build()
        .unwrap();
    let inner = Scripted::new(vec![Step::Status(503)]);
    let svc = layer.layer(inner.clone());
    let results = join_all((0..100).map(|_| svc.clone().oneshot(get()))).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap().status() == StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(inner.calls(), 100 + 10);
    assert_eq!(layer.budget().available(), 0);
}

#[tokio::test(start_paused = true)]
async fn budget_in_sequence_is_exact() {
    // One retry per 10 sequential failing requests: at the 10th, 20th, ... deposit.
    let layer = RetryLayer::builder(3).budget(0.1, 0).build().unwrap();
    let inner = Scripted::new(vec![Step::Status(503)]);
    let mut svc = layer.layer(inner.clone());
    for i in 1..=100usize {
        send(&mut svc, get()).await.unwrap();
        assert_eq!(inner.calls(), i + i / 10, "after request {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_budget() {
    // A floor of 1 retry/s over 1 s and no ratio: one retry in total per second.
    let layer = RetryLayer::builder(1)
        .budget(0.0, 1)
        .budget_window(Duration::from_secs(1))
        .build()
        .unwrap();
    let inner = Scripted::new(vec![Step::Status(503)]);
    let mut a = layer.layer(inner.clone());
    let mut b = a.clone();
    let mut c = layer.layer(inner.clone()); // a second service from the same layer
    send(&mut a, get()).await.unwrap();
    assert_eq!(inner.calls(), 2, "the first request is retried");
    send(&mut b, get()).await.unwrap();
    assert_eq!(inner.calls(), 3, "the clone finds the budget empty");
    send(&mut c, get()).await.unwrap();
    assert_eq!(inner.calls(), 4, "so does another service of the layer");

    tokio::time::advance(Duration::from_millis(1_100)).await;
    send(&mut b, get()).await.unwrap();
    assert_eq!(inner.calls(), 6, "the budget refills after the window");
}

fn ten_kib() -> Bytes {
    (0..10 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A body of `data` in 1 KiB frames with no exact size hint.
fn streamed(
    data: Bytes,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let chunks: Vec<_> = data
        .chunks(1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(chunks))
}

#[tokio::test(start_paused = true)]
async fn bodies_are_replayed_identically() {
    let data = ten_kib();

    // PUT with a streamed 10 KiB body.
    let inner = Scripted::new(vec![Step::Status(503), Step::Fail, Step::Status(200)]);
    let mut svc = layer(2).layer(inner.clone());
    let put = Request::put("/").body(streamed(data.clone())).unwrap();
    assert_eq!(send(&mut svc, put).await.unwrap().status(), StatusCode::OK);
    let seen = inner.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == data));

    // POST with an Idempotency-Key and a 10 KiB body in one frame.
    let inner = Scripted::new(vec![Step::Status(502), Step::Status(200)]);
    let mut svc = tuned(2)
        .retry_with_idempotency_key(true)
        .build()
        .unwrap()
        .layer(inner.clone());
    let post = Request::post("/")
        .header("idempotency-key", "k1")
        .body(Full::new(data.clone()))
        .unwrap();
    assert_eq!(send(&mut svc, post).await.unwrap().status(), StatusCode::OK);
    let seen = inner.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == data));
}

#[tokio::test(start_paused = true)]
async fn body_over_the_limit_is_not_retried() {
    let data = ten_kib();

    // Streamed (no exact size hint): captured until it overflows, then passed through.
    let inner = Scripted::new(vec![Step::Status(503), Step::Status(200)]);
    let mut svc = tuned(2)
        .max_replay_body(4 * 1024)
        .build()
        .unwrap()
        .layer(inner.clone());
    let put = Request::put("/").body(streamed(data.clone())).unwrap();
    let res = send(&mut svc, put).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.body(), "attempt 0");
    assert_eq!(inner.seen().len(), 1);
    assert_eq!(
        inner.seen()[0].body,
        data,
        "the first attempt still gets the whole body"
    );

    // Exact size hint above the limit: capture is skipped.
    let inner = Scripted::new(vec![Step::Status(503), Step::Status(200)]);
    let mut svc = tuned(2)
        .max_replay_body(4 * 1024)
        .build()
        .unwrap()
        .layer(inner.clone());
    let put = Request::put("/").body(Full::new(data.clone())).unwrap();
    let res = send(&mut svc, put).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 1);
    assert_eq!(inner.seen()[0].body, data);

    // Exactly at the limit is replayed.
    let inner = Scripted::new(vec![Step::Status(503), Step::Status(200)]);
    let mut svc = tuned(2)
        .max_replay_body(10 * 1024)
        .build()
        .unwrap()
        .layer(inner.clone());
    let put = Request::put("/").body(streamed(data.clone())).unwrap();
    assert_eq!(send(&mut svc, put).await.unwrap().status(), StatusCode::OK);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn unread_body_is_not_retried() {
    // The inner service answers without reading the body: it cannot be replayed.
    let mut inner = Scripted::new(vec![Step::Status(503), Step::Status(200)]);
    inner.read_body = false;
    let mut svc = layer(2).layer(inner.clone());
    let res = send(&mut svc, req(Method::PUT, "payload")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 1);

    // Without a body there is nothing to read, so it is retried.
    let mut inner = Scripted::new(vec![Step::Status(503), Step::Status(200)]);
    inner.read_body = false;
    let mut svc = layer(2).layer(inner.clone());
    let res = send(&mut svc, req(Method::PUT, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(inner.calls(), 2);
}

fn timed_layer(max_retries: u32) -> RetryLayer {
    RetryLayer::builder(max_retries)
        .backoff_base(Duration::from_millis(10))
        .per_try_timeout(Duration::from_secs(1))
        .budget(1.0, 1_000)
        .jitter(false)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_abandons_a_slow_attempt() {
    let inner = Scripted::new(vec![Step::Hang, Step::Status(200)]);
    let mut svc = timed_layer(2).layer(inner.clone());
    let start = Instant::now();
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        inner.call_offsets(),
        [Duration::ZERO, Duration::from_millis(1_010)]
    );
    assert_eq!(start.elapsed(), Duration::from_millis(1_010));
}

#[tokio::test(start_paused = true)]
async fn last_attempt_timing_out_answers_504() {
    let inner = Scripted::new(vec![Step::Hang]);
    let mut svc = timed_layer(2).layer(inner.clone());
    let start = Instant::now();
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.body(), "", "default body");
    assert_eq!(inner.calls(), 3);
    // 3 × 1 s attempts + 10 ms + 20 ms backoff.
    assert_eq!(start.elapsed(), Duration::from_millis(3_030));

    // A request that is never retried is bounded by the per-try timeout too.
    let inner = Scripted::new(vec![Step::Hang]);
    let mut svc = timed_layer(2).layer(inner.clone());
    let res = send(&mut svc, req(Method::POST, "x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_waits_for_inner_readiness() {
    use tower_test::mock;

    let (mock, mut handle) = mock::pair::<Request<ReplayBody<Full<Bytes>>>, Response<String>>();
    let mut svc = layer(1).layer(mock);
    handle.allow(1);
    let task = tokio::spawn(async move { svc.ready().await.unwrap().call(get()).await });

    let (_, send_response) = handle.next_request().await.unwrap();
    let mut unavailable = Response::new(String::new());
    *unavailable.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    send_response.send_response(unavailable);

    // The clone that retries is not ready (no capacity): no second request goes out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(handle.poll_request().is_pending());
    assert!(!task.is_finished());

    handle.allow(1);
    let (retried, send_response) = handle.next_request().await.unwrap();
    assert_eq!(retried.method(), Method::GET);
    send_response.send_response(Response::new("ok".to_owned()));
    let res = task.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "ok");
}

#[tokio::test(start_paused = true)]
async fn axum_router_layer_retries_a_handler() {
    use axum::routing::put;
    use axum::Router;

    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        move |body: Bytes| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
                } else {
                    (StatusCode::OK, body)
                }
            }
        }
    };
    let app = Router::new().route("/echo", put(handler)).layer(layer(2));

    let req = Request::put("/echo")
        .body(axum::body::Body::from("hello retry"))
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello retry");
}

#[test]
fn invalid_settings_are_rejected_with_field_and_value() {
    let err = RetryLayer::builder(2)
        .per_try_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry.per_try_timeout must be > 0, got 0ns"
    );

    let err = RetryLayer::builder(2)
        .backoff_base(Duration::from_secs(2))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry.backoff_base must be <= retry.backoff_cap (1s), got 2s"
    );

    let err = RetryLayer::builder(2)
        .budget(1001.0, 0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "retry.budget_ratio");
    assert_eq!(
        err.to_string(),
        "retry.budget_ratio must be a number between 0 and 1000, got 1001.0"
    );

    let err = RetryLayer::builder(2)
        .budget_window(Duration::from_secs(61))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry.budget_window must be between 1s and 60s, got 61s"
    );
}

#[test]
fn defaults_are_exposed_for_the_proxy_host() {
    let layer = middlewares::retry(3);
    let policy = layer.policy();
    assert_eq!(policy.max_retries(), 3);
    assert_eq!(policy.max_replay_body(), 64 * 1024);
    assert_eq!(policy.max_retry_after(), Duration::from_secs(5));
    assert_eq!(policy.per_try_timeout(), None);
    assert!(!policy.retry_with_idempotency_key());
    let statuses: Vec<u16> = policy.retryable_statuses().map(|s| s.as_u16()).collect();
    assert_eq!(statuses, [502, 503, 504]);
    assert_eq!(layer.backoff().base(), Duration::from_millis(25));
    assert_eq!(layer.backoff().cap(), Duration::from_secs(1));
    assert!(layer.backoff().jitter());
    assert_eq!(layer.budget().ratio(), 0.2);
    assert_eq!(layer.budget().min_per_sec(), 10);
    assert_eq!(layer.budget().window(), Duration::from_secs(10));
}

/// A breaker inside the retry layer fails fast on purpose: its 503 (marked with `CircuitOpen`)
/// is passed through at once, not retried after its `Retry-After`.
#[tokio::test(start_paused = true)]
async fn a_local_breakers_503_is_not_retried() {
    use middlewares::circuit_breaker::CircuitBreakerLayer;
    use tower::ServiceBuilder;
    let calls = Arc::new(AtomicUsize::new(0));
    let breaker = CircuitBreakerLayer::builder()
        .wait_in_open(Duration::from_secs(5))
        .build()
        .unwrap();
    breaker
        .handle()
        .force_open(middlewares::circuit_breaker::DEFAULT_KEY);
    let svc = ServiceBuilder::new()
        .layer(middlewares::retry(2))
        .layer(breaker)
        .service_fn({
            let calls = calls.clone();
            move |_req: Request<ReplayBody<String>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(String::new())) }
            }
        });
    let start = tokio::time::Instant::now();
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "answered at once, no retry wait"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_sees_the_same_head() {
    #[derive(Debug, Clone, PartialEq)]
    struct Tag(u32);
    type Head = (
        Method,
        http::Uri,
        http::Version,
        Option<String>,
        Option<Tag>,
    );
    let heads: Arc<Mutex<Vec<Head>>> = Arc::default();
    let inner = tower::service_fn({
        let heads = Arc::clone(&heads);
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let header = req
                .headers()
                .get("x-trace")
                .map(|v| v.to_str().unwrap().to_owned());
            let head = (
                req.method().clone(),
                req.uri().clone(),
                req.version(),
                header,
                req.extensions().get::<Tag>().cloned(),
            );
            let n = {
                let mut heads = heads.lock().unwrap();
                heads.push(head);
                heads.len()
            };
            async move {
                let mut res = Response::new(String::new());
                if n < 3 {
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(res)
            }
        }
    });
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri("http://example.com/a?b=c")
        .version(http::Version::HTTP_2)
        .header("x-trace", "abc")
        // Empty: the inner service reads no body, and an unread body is never replayed.
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(Tag(7));
    let res = layer(2).layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 3);
    let first = heads[0].clone();
    assert_eq!(
        first,
        (
            Method::PUT,
            "http://example.com/a?b=c".parse::<http::Uri>().unwrap(),
            http::Version::HTTP_2,
            Some("abc".to_owned()),
            Some(Tag(7)),
        )
    );
    assert!(heads.iter().all(|h| *h == first), "{heads:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_clock_range_is_no_retry_not_a_panic() {
    let inner = Scripted::new(vec![
        Step::StatusWith(503, "retry-after", "18446744073709551615"),
        Step::Status(200),
    ]);
    let mut svc = tuned(2)
        .max_retry_after(Duration::MAX)
        .build()
        .unwrap()
        .layer(inner.clone());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 1);
}
