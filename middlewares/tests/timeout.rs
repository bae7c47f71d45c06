//! Behaviour tests for `middlewares::timeout` (paused tokio clock, no real sleeps).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use middlewares::timeout::{Elapsed, TimeoutLayer, REQUEST_TIMEOUT_HEADER};
use middlewares::Rejection;
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// Sets its flag when dropped: proves the inner future was dropped.
struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An inner service that answers `200 "done"` after `delay`.
fn slow(
    delay: Duration,
) -> impl tower::Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone {
    service_fn(move |_req: Request<String>| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Response::new(String::from("done")))
    })
}

#[tokio::test(start_paused = true)]
async fn fast_inner_passes_through() {
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(slow(Duration::from_millis(200)));
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "done");
}

#[tokio::test(start_paused = true)]
async fn ready_inner_passes_even_with_a_zero_timeout() {
    // The inner future is polled before the timer is armed (or even looked at).
    let inner = service_fn(|_req: Request<String>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(String::from("now"))))
    });
    let res = TimeoutLayer::new(Duration::ZERO)
        .layer(inner)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "now");
}

#[tokio::test(start_paused = true)]
async fn slow_inner_gets_504_and_its_future_is_dropped() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let inner = service_fn(move |_req: Request<String>| {
        let guard = DropGuard(flag.clone());
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(guard);
            Ok::<_, Infallible>(Response::new(String::from("too late")))
        }
    });
    let start = Instant::now();
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(inner);
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.body(), "");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(
        dropped.load(Ordering::SeqCst),
        "inner future was not dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn custom_status() {
    let layer = TimeoutLayer::new(Duration::from_secs(1)).status(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(layer.response_status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = layer
        .layer(slow(Duration::from_secs(5)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn deadline_counts_from_call_not_from_first_poll() {
    use tower::Service;
    let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(slow(Duration::from_secs(5)));
    let start = Instant::now();
    svc.ready().await.unwrap();
    // `call` stamps the deadline; the future is not polled (so no timer is armed) for 900 ms.
    let fut = svc.call(Request::new(String::new()));
    tokio::time::advance(Duration::from_millis(900)).await;
    let res = fut.await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

fn with_client_timeout(ms: &'static str) -> Request<String> {
    let mut req = Request::new(String::new());
    req.headers_mut()
        .insert(REQUEST_TIMEOUT_HEADER, http::HeaderValue::from_static(ms));
    req
}

#[tokio::test(start_paused = true)]
async fn client_header_shortens_deadline_only_when_enabled_and_smaller() {
    let inner = slow(Duration::from_millis(500));
    let base = TimeoutLayer::new(Duration::from_secs(1));

    // Enabled and smaller: 200 ms < 500 ms of work → 504 after 200 ms.
    let start = Instant::now();
    let res = base
        .honor_client_header(true)
        .layer(inner.clone())
        .oneshot(with_client_timeout("200"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_millis(200));

    // Disabled: the header is ignored.
    let res = base
        .layer(inner.clone())
        .oneshot(with_client_timeout("200"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Enabled but larger than the configured timeout: cannot extend it.
    let res = base
        .honor_client_header(true)
        .layer(slow(Duration::from_secs(2)))
        .oneshot(with_client_timeout("5000"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);

    // Enabled but invalid: ignored.
    let res = base
        .honor_client_header(true)
        .layer(inner)
        .oneshot(with_client_timeout("soon"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// An inner service whose body sends "first" at once and "second" after `gap`.
fn streaming<B>(
    gap: Duration,
) -> impl tower::Service<
    Request<B>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |_req: Request<B>| async move {
        let stream = futures_util::stream::unfold(0u8, move |step| async move {
            match step {
                0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"first")), 1)),
                1 => {
                    tokio::time::sleep(gap).await;
                    Some((Ok(Bytes::from_static(b"second")), 2))
                }
                _ => None,
            }
        });
        Ok::<_, Infallible>(Response::new(Body::from_stream(stream)))
    })
}

#[tokio::test(start_paused = true)]
async fn body_deadline_cuts_a_slow_body() {
    let layer = TimeoutLayer::new(Duration::from_secs(1)).with_body_deadline();
    let res = layer
        .layer(streaming::<String>(Duration::from_secs(5)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // `TimeoutBody` holds its timer inline, so it is `!Unpin`: pin it to read frames.
    let mut body = std::pin::pin!(res.into_body());
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    let start = Instant::now();
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(
        err.downcast_ref::<Elapsed>().is_some(),
        "unexpected error: {err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(body.frame().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn body_deadline_lets_a_timely_body_finish() {
    let layer = TimeoutLayer::new(Duration::from_secs(1)).with_body_deadline();
    let res = layer
        .layer(streaming::<String>(Duration::from_millis(300)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "firstsecond");
}

#[tokio::test(start_paused = true)]
async fn plain_timeout_does_not_cover_the_body() {
    let layer = TimeoutLayer::new(Duration::from_secs(1));
    let res = layer
        .layer(streaming::<String>(Duration::from_secs(5)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "firstsecond");
}

#[tokio::test(start_paused = true)]
async fn body_deadline_layer_answers_504_for_a_slow_head() {
    let layer = TimeoutLayer::new(Duration::from_secs(1)).with_body_deadline();
    let res = layer
        .layer(slow(Duration::from_secs(5)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(res
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn axum_router_keeps_infallible() {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "slow"
            }),
        )
        .layer(TimeoutLayer::new(Duration::from_secs(1)));

    let req = |path| Request::get(path).body(Body::empty()).unwrap();
    let res: Result<Response<Body>, Infallible> = app.clone().oneshot(req("/fast")).await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "fast");

    let res: Result<Response<Body>, Infallible> = app.oneshot(req("/slow")).await;
    assert_eq!(res.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn axum_router_with_body_deadline() {
    let body_svc = streaming::<Body>(Duration::from_secs(5));
    let app = axum::Router::new()
        .route_service("/stream", body_svc)
        .layer(TimeoutLayer::new(Duration::from_secs(1)).with_body_deadline());
    let res: Result<Response<Body>, Infallible> = app
        .oneshot(Request::get("/stream").body(Body::empty()).unwrap())
        .await;
    let err = res.unwrap().into_body().collect().await.unwrap_err();
    // axum wraps the body error; the source chain still holds the Elapsed.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut found = false;
    while let Some(e) = source {
        found |= e.downcast_ref::<Elapsed>().is_some();
        source = e.source();
    }
    assert!(found, "no Elapsed in the error chain: {err}");
}

#[test]
fn elapsed_renders_the_configured_status() {
    let layer = TimeoutLayer::new(Duration::from_secs(1)).status(StatusCode::REQUEST_TIMEOUT);
    let res: Response<String> = layer.elapsed().to_response();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(res.body().is_empty());
    assert_eq!(Elapsed::default().status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(Elapsed::default().to_string(), "request deadline elapsed");
}
