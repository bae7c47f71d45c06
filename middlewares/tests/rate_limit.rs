//! Behaviour tests for `middlewares::rate_limit` (paused tokio clock, no real sleeps).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode};
use middlewares::rate_limit::{Decision, Key, KeyValue, RateLimitLayer, RateLimited};
use middlewares::TimeSource;
use middlewares::{Rejection, RequestInfo};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// An inner service that counts its calls (counted in `call`, not when polled) and answers 200.
fn counting() -> (
    Arc<AtomicUsize>,
    impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = service_fn(move |_req: Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(Response::new(String::from("ok"))))
    });
    (calls, svc)
}

async fn send<S>(svc: &mut S, req: Request<String>) -> Response<String>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible>,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn get() -> Request<String> {
    Request::new(String::new())
}

fn from_addr(ip: [u8; 4]) -> Request<String> {
    let mut req = get();
    req.extensions_mut().insert(SocketAddr::from((ip, 4000)));
    req
}

fn header<'a>(res: &'a Response<String>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn burst_then_reject_with_retry_after_and_ietf_headers() {
    let (calls, inner) = counting();
    let layer = RateLimitLayer::builder(3, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    for _ in 0..3 {
        let res = send(&mut svc, get()).await;
        assert_eq!(res.status(), StatusCode::OK);
        // Off by default: admitted responses carry no rate-limit headers.
        assert!(res.headers().get("ratelimit").is_none());
    }
    let res = send(&mut svc, get()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.body().is_empty());
    // One token per 20 s.
    assert_eq!(header(&res, "retry-after"), "20");
    assert_eq!(header(&res, "ratelimit-policy"), "\"default\";q=3;w=60");
    assert_eq!(header(&res, "ratelimit"), "\"default\";r=0;t=60");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "rejected request reached the inner service"
    );
    assert_eq!(layer.stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_rounds_up_to_at_least_one_second() {
    let (_, inner) = counting();
    // 10 per second: one token per 100 ms.
    let mut svc = RateLimitLayer::builder(10, Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(inner);
    for _ in 0..10 {
        assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    }
    let res = send(&mut svc, get()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1");
    // 2.5 s period → window rounded up to 3 s.
    let layer = RateLimitLayer::builder(1, Duration::from_millis(2_500))
        .build()
        .unwrap();
    let now = Instant::now();
    assert!(matches!(
        layer.check(&KeyValue::Global, now),
        Decision::Allow(_)
    ));
    let Decision::Reject(err) = layer.check(&KeyValue::Global, now) else {
        panic!("expected a rejection")
    };
    assert_eq!(err.retry_after(), Duration::from_millis(2_500));
    assert_eq!(err.retry_after_secs(), 3);
    assert_eq!(err.headers()["ratelimit-policy"], "\"default\";q=1;w=3");
}

#[tokio::test(start_paused = true)]
async fn refills_as_time_advances() {
    let (_, inner) = counting();
    let mut svc = RateLimitLayer::builder(2, Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(inner);
    assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, get()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Half a period gives back one token, not two.
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, get()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A long pause refills the bucket to its capacity, no more.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, get()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn burst_can_differ_from_limit() {
    let layer = RateLimitLayer::builder(10, Duration::from_secs(1))
        .burst(2)
        .build()
        .unwrap();
    let now = Instant::now();
    assert!(
        matches!(layer.check(&KeyValue::Global, now), Decision::Allow(q) if q.remaining() == Some(1))
    );
    assert!(
        matches!(layer.check(&KeyValue::Global, now), Decision::Allow(q) if q.remaining() == Some(0))
    );
    let Decision::Reject(err) = layer.check(&KeyValue::Global, now) else {
        panic!("expected a rejection")
    };
    assert_eq!(err.retry_after(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_bucket() {
    // tower#794: per-clone limiter state multiplies the limit. Here every clone counts together.
    let (calls, inner) = counting();
    let layer = RateLimitLayer::builder(4, Duration::from_secs(1))
        .build()
        .unwrap();
    let mut a = layer.layer(inner.clone());
    let mut b = a.clone();
    let mut c = layer.layer(inner); // a second service built from the same layer value
    let mut ok = 0;
    for i in 0..12 {
        let svc = match i % 3 {
            0 => &mut a,
            1 => &mut b,
            _ => &mut c,
        };
        if send(svc, get()).await.status() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn client_ip_keys_isolate_clients() {
    let (_, inner) = counting();
    let mut svc = RateLimitLayer::builder(1, Duration::from_secs(10))
        .key(Key::ClientIp)
        .build()
        .unwrap()
        .layer(inner);
    assert_eq!(
        send(&mut svc, from_addr([192, 0, 2, 1])).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, from_addr([192, 0, 2, 1])).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client has its own bucket.
    assert_eq!(
        send(&mut svc, from_addr([192, 0, 2, 2])).await.status(),
        StatusCode::OK
    );

    // No address at all: one shared "unknown" bucket.
    assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, get()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// With the crate's `axum` feature, `ConnectInfo<SocketAddr>` is read too, before a plain
/// `SocketAddr`.
#[cfg(feature = "axum")]
#[tokio::test(start_paused = true)]
async fn client_ip_from_axum_connect_info() {
    use axum::extract::ConnectInfo;
    let (_, inner) = counting();
    let mut svc = RateLimitLayer::builder(1, Duration::from_secs(10))
        .key(Key::ClientIp)
        .build()
        .unwrap()
        .layer(inner);
    // Both present: the ConnectInfo address is the key.
    let mut req = from_addr([192, 0, 2, 1]);
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([198, 51, 100, 7], 1234))));
    assert_eq!(send(&mut svc, req).await.status(), StatusCode::OK);
    let mut req = get();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([198, 51, 100, 7], 9999))));
    assert_eq!(
        send(&mut svc, req).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The plain SocketAddr's client was not charged.
    assert_eq!(
        send(&mut svc, from_addr([192, 0, 2, 1])).await.status(),
        StatusCode::OK
    );
}

fn with_header(name: &'static str, value: &'static str) -> Request<String> {
    let mut req = get();
    req.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    req
}

#[tokio::test(start_paused = true)]
async fn header_keys_isolate_values() {
    let (_, inner) = counting();
    let mut svc = RateLimitLayer::builder(1, Duration::from_secs(10))
        .key(Key::Header(http::HeaderName::from_static("x-api-key")))
        .build()
        .unwrap()
        .layer(inner);
    assert_eq!(
        send(&mut svc, with_header("x-api-key", "alice"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, with_header("x-api-key", "bob"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, with_header("x-api-key", "alice"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Missing header: the shared unknown bucket, not a bypass.
    assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    assert_eq!(
        send(&mut svc, get()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn closure_keys_and_exemptions() {
    let (calls, inner) = counting();
    let mut svc = RateLimitLayer::builder(1, Duration::from_secs(10))
        .key_fn(|info: &RequestInfo<'_>| {
            let path = info.uri.path();
            // Health checks are never limited; everything else by first path segment.
            (path != "/health").then(|| path.split('/').nth(1).unwrap_or("").to_owned())
        })
        .build()
        .unwrap()
        .layer(inner);
    let at = |uri: &str| Request::get(uri).body(String::new()).unwrap();
    assert_eq!(
        send(&mut svc, at("/users/1")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, at("/users/2")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&mut svc, at("/orders/1")).await.status(),
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(send(&mut svc, at("/health")).await.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

fn forwarded(xff: &'static str, peer: [u8; 4]) -> Request<String> {
    let mut req = from_addr(peer);
    req.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static(xff));
    req
}

#[tokio::test(start_paused = true)]
async fn forwarded_for_only_with_trusted_hops() {
    const PROXY: [u8; 4] = [10, 0, 0, 1];
    let (_, inner) = counting();
    // Without trusted hops, X-Forwarded-For is ignored: both requests come from the proxy.
    let mut untrusting = RateLimitLayer::builder(1, Duration::from_secs(10))
        .key(Key::ClientIp)
        .build()
        .unwrap()
        .layer(inner.clone());
    assert_eq!(
        send(&mut untrusting, forwarded("203.0.113.1", PROXY))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut untrusting, forwarded("203.0.113.2", PROXY))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Two trusted proxies: the client is the 2nd entry from the right; a spoofed leftmost entry
    // does not matter.
    let mut trusting = RateLimitLayer::builder(1, Duration::from_secs(10))
        .key(Key::ClientIp)
        .trusted_hops(2)
        .build()
        .unwrap()
        .layer(inner);
    assert_eq!(
        send(
            &mut trusting,
            forwarded("1.1.1.1, 203.0.113.1, 10.0.0.9", PROXY)
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut trusting, forwarded("203.0.113.2, 10.0.0.9", PROXY))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(
            &mut trusting,
            forwarded("6.6.6.6, 203.0.113.1, 10.0.0.9", PROXY)
        )
        .await
        .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn queue_mode_delays_then_serves_and_rejects_beyond_max_delay() {
    let (calls, inner) = counting();
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .queue(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    let start = Instant::now();
    // Issue four requests at the same instant.
    let mut futures = Vec::new();
    for _ in 0..4 {
        futures.push(svc.ready().await.unwrap().call(get()));
    }
    // Only the first reached the inner service; the queued ones are called after their wait.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let mut futures = futures.into_iter();

    let res = futures.next().unwrap().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::ZERO);

    // The fourth would wait 3 s > 2 s: rejected at once, without waiting.
    let fourth = futures.next_back().unwrap().await.unwrap();
    assert_eq!(fourth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&fourth, "retry-after"), "3");
    assert_eq!(start.elapsed(), Duration::ZERO);

    let res = futures.next().unwrap().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let res = futures.next().unwrap().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let stats = layer.stats();
    assert_eq!((stats.delayed, stats.rejected), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn max_queue_bounds_waiting_requests_per_key() {
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .max_queue(1)
        .build()
        .unwrap();
    let now = Instant::now();
    assert!(matches!(
        layer.check(&KeyValue::Global, now),
        Decision::Allow(_)
    ));
    let Decision::Delay { delay, quota } = layer.check(&KeyValue::Global, now) else {
        panic!("expected a delay")
    };
    assert_eq!(delay, Duration::from_secs(1));
    assert_eq!(
        (quota.remaining(), quota.reset()),
        (Some(0), Some(Duration::from_secs(2)))
    );
    assert!(matches!(
        layer.check(&KeyValue::Global, now),
        Decision::Reject(_)
    ));
    // `queue` and `max_queue` together: the tighter bound wins.
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .queue(Duration::from_secs(60))
        .max_queue(2)
        .build()
        .unwrap();
    assert_eq!(layer.max_delay(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn dry_run_counts_but_lets_everything_through() {
    let (calls, inner) = counting();
    let layer = RateLimitLayer::builder(1, Duration::from_secs(10))
        .dry_run(true)
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    for _ in 0..3 {
        assert_eq!(send(&mut svc, get()).await.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(layer.stats().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn expose_headers_on_admitted_responses() {
    let (_, inner) = counting();
    let mut svc = RateLimitLayer::builder(3, Duration::from_secs(3))
        .expose_headers(true)
        .build()
        .unwrap()
        .layer(inner);
    let res = send(&mut svc, get()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "ratelimit-policy"), "\"default\";q=3;w=3");
    assert_eq!(header(&res, "ratelimit"), "\"default\";r=2;t=1");
    let res = send(&mut svc, get()).await;
    assert_eq!(header(&res, "ratelimit"), "\"default\";r=1;t=2");
}

#[tokio::test(start_paused = true)]
async fn max_keys_bound_holds() {
    let (_, inner) = counting();
    let layer = RateLimitLayer::builder(1, Duration::from_secs(60))
        .key(Key::Header(http::HeaderName::from_static("x-client")))
        .max_keys(32)
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    let mut rejected = 0;
    for i in 0..1_000 {
        let mut req = get();
        req.headers_mut().insert(
            "x-client",
            HeaderValue::from_str(&format!("client-{i}")).unwrap(),
        );
        if send(&mut svc, req).await.status() == StatusCode::TOO_MANY_REQUESTS {
            rejected += 1;
        }
    }
    let stats = layer.stats();
    assert!(stats.keys <= 32, "{} keys held", stats.keys);
    assert!(stats.keys > 0);
    // New keys beyond the bound take the place of the least recently used key (each still in
    // debt, so its debt is forgotten): every new client is counted in a bucket of its own.
    assert!(stats.evicted_busy >= 1_000 - 32, "{stats:?}");
    assert_eq!(rejected, 0, "a first request starts from a full bucket");

    // Once the held keys are idle they are evicted and new keys get their own buckets again.
    tokio::time::advance(Duration::from_secs(61)).await;
    let mut req = get();
    req.headers_mut()
        .insert("x-client", HeaderValue::from_static("late"));
    assert_eq!(send(&mut svc, req).await.status(), StatusCode::OK);
    assert!(layer.evict_idle(Instant::now()) > 0);
    assert!(layer.stats().keys <= 32);
}

#[test]
fn config_errors_name_field_and_value() {
    let err = RateLimitLayer::builder(0, Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "rate_limit.limit must be > 0, got 0");
    assert_eq!(err.field(), "rate_limit.limit");
    let err = RateLimitLayer::builder(5, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "rate_limit.period must be > 0, got 0ns");
    let err = RateLimitLayer::builder(5, Duration::from_secs(1))
        .burst(0)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "rate_limit.burst must be > 0, got 0");
    let err = RateLimitLayer::builder(5, Duration::from_secs(1))
        .max_keys(0)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "rate_limit.max_keys must be > 0, got 0");
}

#[tokio::test(start_paused = true)]
async fn host_agnostic_core() {
    // What the Pingora host does in request_filter: key_for, then check, then render.
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .key(Key::ClientIp)
        .build()
        .unwrap();
    let req = http::Request::get("/").body(()).unwrap();
    let (parts, ()) = req.into_parts();
    let info = RequestInfo::from_parts(&parts);
    let peer = "192.0.2.10".parse().unwrap();
    let key = layer.key_for_peer(&info, Some(peer)).unwrap();
    assert_eq!(key, KeyValue::Ip(peer));
    assert_eq!(layer.key_for(&info), Some(KeyValue::Unknown));
    let now = Instant::now();
    assert!(matches!(layer.check(&key, now), Decision::Allow(_)));
    let Decision::Reject(err) = layer.check(&key, now) else {
        panic!("expected a rejection")
    };
    let res: Response<()> = err.to_response();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(err.to_string(), "rate limited, retry after 1s");
    let _: &dyn std::error::Error = &err as &RateLimited;
}

#[tokio::test(start_paused = true)]
async fn axum_router_keeps_infallible() {
    use axum::routing::get;
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer);
    let req = || Request::get("/").body(Body::empty()).unwrap();
    let res: Result<Response<Body>, Infallible> = app.clone().oneshot(req()).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    let res: Result<Response<Body>, Infallible> = app.oneshot(req()).await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
}

#[tokio::test(start_paused = true)]
async fn axum_router_in_queue_mode() {
    use axum::routing::get;
    let layer = RateLimitLayer::builder(1, Duration::from_secs(1))
        .queue(Duration::from_secs(5))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer);
    let start = Instant::now();
    for expected in 0..3u64 {
        let res = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(start.elapsed(), Duration::from_secs(expected));
    }
}

#[tokio::test(start_paused = true)]
async fn queued_requests_carry_the_quota_headers_too() {
    let (calls, inner) = counting();
    let mut svc = RateLimitLayer::builder(1, Duration::from_secs(1))
        .queue(Duration::from_secs(2))
        .expose_headers(true)
        .build()
        .unwrap()
        .layer(inner);
    let first = svc.ready().await.unwrap().call(get());
    let second = svc.ready().await.unwrap().call(get());
    let start = Instant::now();
    let res = first.await.unwrap();
    assert_eq!(header(&res, "ratelimit"), "\"default\";r=0;t=1");
    let res = second.await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "ratelimit-policy"), "\"default\";q=1;w=1");
    assert_eq!(header(&res, "ratelimit"), "\"default\";r=0;t=2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_default_clock_follows_paused_time_and_the_counter_does_not() {
    // Both paths of the service: the global fast path and the keyed one.
    for key in [Key::Global, Key::ClientIp] {
        let build = |clock| {
            RateLimitLayer::builder(1, Duration::from_secs(10))
                .key(key.clone())
                .clock(clock)
                .build()
                .unwrap()
        };
        let on_tokio = build(TimeSource::Auto);
        let on_counter = build(TimeSource::Counter);
        assert_eq!(
            on_tokio.clock(),
            TimeSource::Tokio,
            "built on a paused clock"
        );
        assert_eq!(on_counter.clock(), TimeSource::Counter);
        for (layer, refilled) in [
            (on_tokio, StatusCode::OK),
            (on_counter, StatusCode::TOO_MANY_REQUESTS),
        ] {
            let (_, inner) = counting();
            let mut svc = layer.layer(inner);
            let client = || from_addr([10, 0, 0, 1]);
            assert_eq!(send(&mut svc, client()).await.status(), StatusCode::OK);
            assert_eq!(
                send(&mut svc, client()).await.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "{key:?}"
            );
            // Ten paused seconds refill tokio's bucket; the counter has seen microseconds pass.
            tokio::time::advance(Duration::from_secs(11)).await;
            assert_eq!(send(&mut svc, client()).await.status(), refilled, "{key:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_counter_clock_limiter_takes_explicit_instants_on_its_timeline() {
    let layer = RateLimitLayer::builder(1, Duration::from_secs(10))
        .clock(TimeSource::Counter)
        .build()
        .unwrap();
    let now = Instant::now();
    assert!(matches!(
        layer.check(&KeyValue::Global, now),
        Decision::Allow(_)
    ));
    assert!(matches!(
        layer.check(&KeyValue::Global, now),
        Decision::Reject(_)
    ));
    assert!(matches!(
        layer.check(&KeyValue::Global, now + Duration::from_secs(10)),
        Decision::Allow(_)
    ));
    // `check_now` reads the counter, which is still near the start of the timeline.
    assert!(matches!(
        layer.check_now(&KeyValue::Global),
        Decision::Reject(_)
    ));
}

#[tokio::test]
async fn per_key_limits_on_the_counter_clock() {
    let layer = RateLimitLayer::builder(1, Duration::from_secs(60))
        .key(Key::ClientIp)
        .build()
        .unwrap();
    assert_eq!(
        layer.clock(),
        TimeSource::Counter,
        "tokio's clock is running"
    );
    let (calls, inner) = counting();
    let mut svc = layer.layer(inner);
    let status = |res: Response<String>| res.status();
    assert_eq!(
        status(send(&mut svc, from_addr([10, 0, 0, 1])).await),
        StatusCode::OK
    );
    assert_eq!(
        status(send(&mut svc, from_addr([10, 0, 0, 1])).await),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(send(&mut svc, from_addr([10, 0, 0, 2])).await),
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn from_ip(ip: IpAddr) -> Request<String> {
    let mut req = get();
    req.extensions_mut().insert(SocketAddr::from((ip, 4000)));
    req
}

/// The address `2001:db8:0:<net>::<host>`: `net` picks the /64.
fn v6(net: u16, host: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8_u128 << 96) | (u128::from(net) << 64) | u128::from(host),
    ))
}

#[tokio::test(start_paused = true)]
async fn key_rotation_does_not_lock_out_new_clients() {
    let (_, inner) = counting();
    let layer = RateLimitLayer::builder(1, Duration::from_secs(60))
        .key(Key::ClientIp)
        .max_keys(160)
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    // One client rotates through 2,000 networks within one second, filling the key table with
    // busy keys (each owes the rest of its minute).
    for net in 0..2_000u16 {
        send(&mut svc, from_ip(v6(net, 1))).await;
        tokio::time::advance(Duration::from_micros(500)).await;
    }
    assert!(
        layer.stats().keys <= 160,
        "{} keys held",
        layer.stats().keys
    );
    // First-time clients are still admitted: each new key replaces the least recently used one
    // instead of sharing one drained bucket. (An unbounded table admits all 100 too.)
    let mut admitted = 0;
    for host in 0..100u8 {
        let res = send(&mut svc, from_addr([198, 51, 100, host])).await;
        if res.status() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert!(admitted >= 50, "{admitted} of 100 new clients admitted");
    assert_eq!(
        admitted, 100,
        "every first request starts from a full bucket"
    );
    assert!(
        layer.stats().keys <= 160,
        "{} keys held",
        layer.stats().keys
    );
}

#[tokio::test(start_paused = true)]
async fn ipv6_clients_are_keyed_per_64_by_default() {
    let (calls, inner) = counting();
    let mut svc = RateLimitLayer::builder(2, Duration::from_secs(60))
        .key(Key::ClientIp)
        .build()
        .unwrap()
        .layer(inner);
    // Three addresses of one /64: one bucket of 2.
    for (host, expected) in [
        (1, StatusCode::OK),
        (0xffff_0000_0000_0009, StatusCode::OK),
        (0xabcd_0000_0000_0000, StatusCode::TOO_MANY_REQUESTS),
    ] {
        let res = send(&mut svc, from_ip(v6(7, host))).await;
        assert_eq!(res.status(), expected, "host {host:#x}");
    }
    // The next /64 is another client.
    assert_eq!(
        send(&mut svc, from_ip(v6(8, 1))).await.status(),
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_burst_beyond_the_timeline_is_refused_not_unlimited() {
    const DAY: Duration = Duration::from_secs(86_400);
    // 250,000 days of burst: more than u64 nanoseconds hold.
    let built = RateLimitLayer::builder(1, DAY).burst(250_000).build();
    let err = built.expect_err("a tolerance past the timeline must be refused");
    assert_eq!(err.field(), "rate_limit.burst");
    assert_eq!(err.value(), "250000");
    assert_eq!(
        err.to_string(),
        "rate_limit.burst must be ≤ 53374 at 1 per 86400s \
         (burst × period / limit at most ~146 years), got 250000"
    );
    // One request per 600 years: the interval alone is past the timeline.
    let years_600 = Duration::from_secs(600 * 365 * 86_400);
    let err = RateLimitLayer::builder(1, years_600)
        .build()
        .expect_err("an interval past the timeline must be refused");
    assert_eq!(err.field(), "rate_limit.period");
    assert_eq!(err.value(), format!("{years_600:?}"));
}

#[tokio::test(start_paused = true)]
async fn the_longest_accepted_burst_still_limits() {
    const DAY: Duration = Duration::from_secs(86_400);
    let layer = RateLimitLayer::builder(1, DAY)
        .burst(50_000)
        .build()
        .unwrap();
    let now = Instant::now();
    for i in 0..50_000 {
        let decision = layer.check(&KeyValue::Global, now);
        assert!(matches!(decision, Decision::Allow(_)), "request {i}");
    }
    assert!(matches!(
        layer.check(&KeyValue::Global, now),
        Decision::Reject(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn prefix_lengths_are_configurable() {
    let (_, inner) = counting();
    // Per address for IPv6, per /24 for IPv4.
    let mut svc = RateLimitLayer::builder(1, Duration::from_secs(60))
        .key(Key::ClientIp)
        .ipv6_prefix(128)
        .ipv4_prefix(24)
        .build()
        .unwrap()
        .layer(inner);
    for host in [1, 2] {
        let res = send(&mut svc, from_ip(v6(7, host))).await;
        assert_eq!(res.status(), StatusCode::OK, "host {host}");
    }
    assert_eq!(
        send(&mut svc, from_addr([192, 0, 2, 1])).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, from_addr([192, 0, 2, 200])).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let err = RateLimitLayer::builder(1, Duration::from_secs(1))
        .ipv6_prefix(129)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rate_limit.ipv6_prefix must be 0..=128, got 129"
    );
    let err = RateLimitLayer::builder(1, Duration::from_secs(1))
        .ipv4_prefix(33)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rate_limit.ipv4_prefix must be 0..=32, got 33"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_key_gives_way_the_moment_its_bucket_is_full() {
    let (_, inner) = counting();
    let layer = RateLimitLayer::builder(1, Duration::from_secs(60))
        .key(Key::Header(http::HeaderName::from_static("x-client")))
        .max_keys(1)
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    let client = |name: &'static str| with_header("x-client", name);
    assert_eq!(send(&mut svc, client("a")).await.status(), StatusCode::OK);
    // Exactly one refill later "a" is idle: "b" takes its place without evicting a debt.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(send(&mut svc, client("b")).await.status(), StatusCode::OK);
    assert_eq!(layer.stats().evicted_busy, 0);
    assert_eq!(
        send(&mut svc, client("b")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A busy key gives way too, and is counted.
    assert_eq!(send(&mut svc, client("c")).await.status(), StatusCode::OK);
    assert_eq!(layer.stats().evicted_busy, 1);
    assert_eq!(layer.stats().keys, 1);
}
