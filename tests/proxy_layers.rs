//! The `middlewares` layers inside the Pingora reverse proxy, end to end: real TCP on
//! 127.0.0.1, upstreams are axum apps on `ServeTower` that follow a script of statuses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::any;
use axum::Router;
use http::Request;
use pingora_tower::middleware;
use pingora_tower::middleware::circuit_breaker::{
    CircuitBreakerLayer, State as BreakerState, Window,
};
use pingora_tower::middleware::rate_limit::RateLimitLayer;
use pingora_tower::proxy::{PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower::{server, ServeTower};
use pingora_tower_test_support::*;

fn post(addr: SocketAddr, path: &str, body: &'static str) -> Request<ClientBody> {
    Request::post(path)
        .header("host", addr.to_string())
        .body(full(body))
        .unwrap()
}

async fn status_of(addr: SocketAddr, req: Request<ClientBody>) -> StatusCode {
    let res = send(addr, req).await;
    let status = res.status();
    body_text(res).await;
    status
}

#[tokio::test]
async fn retry_turns_two_503s_into_200_for_get_but_never_resends_a_post() {
    let up = ScriptedUpstream::start().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(middleware::retry(2))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();

    up.script.queue(&[503, 503]);
    assert_eq!(http_get(addr, "/thing").await.0, StatusCode::OK);
    assert_eq!(up.script.gets(), 3, "two retries then success");

    up.script.queue(&[503, 503]);
    assert_eq!(
        status_of(addr, post(addr, "/thing", "once")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(up.script.posts(), 1, "the POST reached the upstream once");
    proxy.shutdown().await;
}

#[tokio::test]
async fn retry_gives_up_after_max_retries_and_passes_the_last_answer() {
    let up = ScriptedUpstream::start().await;
    up.script.answer_always(Some(502));
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(middleware::retry(2))
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        http_get(proxy.local_addr(), "/").await.0,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(up.script.gets(), 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_retried_on_the_other_backend() {
    let up = ScriptedUpstream::start().await;
    let refusing = format!("http://{}", refusing_addr());
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::weighted([(refusing.as_str(), 1), (up.url().as_str(), 1)]),
        )])
        .middleware(middleware::retry(2))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for _ in 0..6 {
        assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    }
    // Nothing reached the refusing backend, so even a POST may go to the other one.
    assert_eq!(status_of(addr, post(addr, "/", "x")).await, StatusCode::OK);
    assert_eq!(up.script.hits(), 7);
    proxy.shutdown().await;
}

fn fast_breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .sliding_window(Window::Count(4))
        .minimum_calls(4)
        .failure_rate_threshold(50)
        // Long enough that the twenty requests checking the open state finish inside it on a
        // loaded machine; the recovery below waits it out.
        .wait_in_open(Duration::from_millis(1_000))
        .permitted_calls_in_half_open(1)
        .build()
        .unwrap()
}

#[tokio::test]
async fn breaker_opens_a_failing_backend_and_closes_it_after_recovery() {
    let (bad, good) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    bad.script.answer_always(Some(500));
    let breaker = fast_breaker();
    let handle = breaker.handle();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::weighted([(bad.url(), 1), (good.url(), 1)]),
        )])
        .middleware(breaker)
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();

    for _ in 0..40 {
        if handle.state(&bad.breaker_key()) == Some(BreakerState::Open) {
            break;
        }
        http_get(addr, "/").await;
    }
    assert_eq!(handle.state(&bad.breaker_key()), Some(BreakerState::Open));
    let bad_hits = bad.script.hits();
    for _ in 0..20 {
        assert_eq!(
            http_get(addr, "/").await.0,
            StatusCode::OK,
            "the open backend is skipped"
        );
    }
    assert_eq!(
        bad.script.hits(),
        bad_hits,
        "no request reached the open backend"
    );

    // The backend recovers; once the wait in open has passed a trial call closes the breaker.
    bad.script.answer_always(None);
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    for _ in 0..20 {
        if handle.state(&bad.breaker_key()) == Some(BreakerState::Closed) {
            break;
        }
        assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    }
    assert_eq!(handle.state(&bad.breaker_key()), Some(BreakerState::Closed));
    for _ in 0..4 {
        http_get(addr, "/").await;
    }
    assert!(
        bad.script.hits() > bad_hits,
        "the recovered backend gets traffic again"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn every_backend_open_answers_503_without_contacting_any() {
    let (a, b) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let breaker = middleware::circuit_breaker(50, 10_000);
    let handle = breaker.handle();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::weighted([(a.url(), 1), (b.url(), 1)]),
        )])
        .middleware(middleware::retry(2))
        .middleware(breaker)
        .spawn()
        .await
        .unwrap();
    handle.force_open(&a.breaker_key());
    handle.force_open(&b.breaker_key());
    let res = send(proxy.local_addr(), get_request(proxy.local_addr(), "/")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(a.script.hits() + b.script.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn rate_limit_sixth_request_gets_429_and_the_upstream_saw_five() {
    let up = ScriptedUpstream::start().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(middleware::rate_limit(5, 60_000))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for _ in 0..5 {
        let res = send(addr, get_request(addr, "/")).await;
        assert_eq!(res.status(), StatusCode::OK);
        // Admitted answers carry the `RateLimit` headers only when asked to expose them.
        assert!(
            !res.headers().contains_key("ratelimit"),
            "{:?}",
            res.headers()
        );
    }
    let res = send(addr, get_request(addr, "/")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    assert!(res.headers().contains_key("ratelimit-policy"));
    assert_eq!(up.script.hits(), 5);
    proxy.shutdown().await;
}

#[tokio::test]
async fn one_layer_value_shares_its_limiter_and_breakers_between_axum_and_the_proxy() {
    let up = ScriptedUpstream::start().await;
    let limiter = RateLimitLayer::builder(4, Duration::from_secs(60))
        .build()
        .unwrap();
    let breaker = middleware::circuit_breaker(50, 10_000);
    let handle = breaker.handle();

    let app = Router::new()
        .route("/", any(|| async { "axum" }))
        .layer(limiter.clone())
        .layer(breaker.clone());
    let axum_server = server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(limiter.clone())
        .middleware(breaker)
        .spawn()
        .await
        .unwrap();
    let (app_addr, proxy_addr) = (axum_server.local_addr(), proxy.local_addr());

    for addr in [app_addr, proxy_addr, app_addr, proxy_addr] {
        assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    }
    assert_eq!(
        http_get(proxy_addr, "/").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        http_get(app_addr, "/").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        limiter.stats().rejected,
        2,
        "one limiter counted both hosts' rejections"
    );

    // One registry: the app's breaker and the proxy's per-backend breaker live side by side.
    let keys = handle.keys();
    assert!(keys.contains(&up.breaker_key()), "keys: {keys:?}");
    assert!(keys.len() >= 2, "keys: {keys:?}");
    proxy.shutdown().await;
    axum_server.shutdown().await;
}

#[tokio::test]
async fn timeout_layer_answers_504_before_the_upstream_does() {
    let up = ScriptedUpstream::start().await;
    up.script.hold(true);
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(middleware::timeout(300))
        .spawn()
        .await
        .unwrap();
    let (status, _) = tokio::time::timeout(HANG_GUARD, http_get(proxy.local_addr(), "/"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(up.script.hits(), 1, "the request reached the upstream");
    assert!(!up.script.answered(), "the upstream had not answered yet");
    up.script.release_one();
    proxy.shutdown().await;
}

#[tokio::test]
async fn four_layer_stack_proxies_bodies_unchanged() {
    let up = ScriptedUpstream::start().await;
    let proxy: RunningProxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(middleware::timeout(5_000))
        .middleware(middleware::rate_limit(10_000, 1_000))
        .middleware(middleware::retry(2))
        .middleware(middleware::circuit_breaker(50, 10_000))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let body = "x".repeat(256 * 1024);
    let req = Request::put("/upload")
        .header("host", addr.to_string())
        .body(full(body.clone()))
        .unwrap();
    let res = send(addr, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_text(res).await, body);
    assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Upstream timeouts and the request deadline
// ---------------------------------------------------------------------------------------------

/// Bound on a request that one of the short timeouts below must end: far above them, far
/// below the long ones (30 s) they must win over.
const SHORT_GUARD: Duration = Duration::from_secs(10);
/// A timeout that must not be the one firing.
const LONG: Duration = Duration::from_secs(30);

/// What a raw upstream does with a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    /// Reads the request and never answers (the connection stays open).
    StallBeforeHead,
    /// Sends a head promising 10 body bytes, 5 of them, then nothing.
    StallMidBody,
    /// Answers `200` with `ok`.
    Answer,
}

/// A raw TCP upstream: the n-th request it reads gets `acts[n]` (the last act once they run
/// out). Counts the requests it read.
struct RawUp {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUp {
    async fn start(acts: &[Act]) -> RawUp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        init_tracing();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let acts: Arc<[Act]> = acts.into();
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counter, acts) = (counter.clone(), acts.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request head (bodies, if any, are small and ignored).
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        match acts[n.min(acts.len() - 1)] {
                            Act::StallBeforeHead => {
                                tokio::time::sleep(HANG_GUARD).await;
                                return;
                            }
                            Act::StallMidBody => {
                                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
                                let _ = stream.write_all(head).await;
                                tokio::time::sleep(HANG_GUARD).await;
                                return;
                            }
                            Act::Answer => {
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(ok).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        RawUp {
            addr,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn get_within(addr: SocketAddr, path: &str) -> StatusCode {
    tokio::time::timeout(SHORT_GUARD, http_get(addr, path))
        .await
        .expect("answered within the short guard")
        .0
}

#[tokio::test]
async fn request_deadline_spans_attempts_and_answers_504() {
    let (a, b) = (
        RawUp::start(&[Act::StallBeforeHead]).await,
        RawUp::start(&[Act::StallBeforeHead]).await,
    );
    // The first attempt runs out of response time at 400 ms and fails over; the second has
    // 200 ms of the deadline left, less than its own response time.
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::weighted([(a.url(), 1), (b.url(), 1)]),
        )])
        .request_timeout(Duration::from_millis(600))
        .upstream_response_timeout(Duration::from_millis(400))
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        get_within(proxy.local_addr(), "/").await,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 1),
        "both backends were tried once"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_response_timeout_fails_a_get_over_and_answers_a_post_504() {
    let (stalled, good) = (
        RawUp::start(&[Act::StallBeforeHead]).await,
        RawUp::start(&[Act::Answer]).await,
    );
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([
            Route::prefix(
                "/",
                Upstream::weighted([(stalled.url(), 1), (good.url(), 1)]),
            ),
            Route::prefix("/only-stalled", Upstream::new(stalled.url())),
        ])
        .upstream_response_timeout(Duration::from_millis(300))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for _ in 0..4 {
        assert_eq!(get_within(addr, "/").await, StatusCode::OK);
    }
    let stalled_gets = stalled.requests();
    assert!(
        stalled_gets >= 1,
        "the stalled backend was tried first at least once"
    );
    // A POST is not failed over once it reached the upstream: 504 after one attempt.
    let post = tokio::time::timeout(
        SHORT_GUARD,
        status_of(addr, post(addr, "/only-stalled", "x")),
    )
    .await
    .expect("answered within the short guard");
    assert_eq!(post, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(stalled.requests(), stalled_gets + 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_response_body_pausing_past_the_read_timeout_is_cut() {
    use tokio::io::AsyncWriteExt;
    let up = RawUp::start(&[Act::StallMidBody]).await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .upstream_read_timeout(Duration::from_millis(300))
        .spawn()
        .await
        .unwrap();
    let mut client = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = read_until_closed(&mut client, SHORT_GUARD)
        .await
        .expect("the proxy closed the connection mid-body");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.ends_with("hello"),
        "the body was cut after 5 of 10 bytes: {seen}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn builder_deadline_and_timeout_layer_the_shorter_wins() {
    let up = RawUp::start(&[Act::StallBeforeHead]).await;
    let layer_shorter = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .request_timeout(LONG)
        .middleware(middleware::timeout(300))
        .spawn()
        .await
        .unwrap();
    let builder_shorter = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .with_timeouts(1_000, 300)
        .middleware(middleware::timeout(LONG.as_millis() as u64))
        .spawn()
        .await
        .unwrap();
    for proxy in [&layer_shorter, &builder_shorter] {
        assert_eq!(
            get_within(proxy.local_addr(), "/").await,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
    layer_shorter.shutdown().await;
    builder_shorter.shutdown().await;
}

#[tokio::test]
async fn retry_per_try_timeout_retries_a_stalled_get_but_not_a_post() {
    let up = RawUp::start(&[Act::StallBeforeHead, Act::Answer]).await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(
            middleware::retry::RetryLayer::builder(2)
                .per_try_timeout(Duration::from_millis(300))
                .backoff_base(Duration::from_millis(1))
                .build()
                .unwrap(),
        )
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    assert_eq!(get_within(addr, "/").await, StatusCode::OK);
    assert_eq!(up.requests(), 2, "the stalled attempt was retried once");
    proxy.shutdown().await;

    let up = RawUp::start(&[Act::StallBeforeHead, Act::Answer]).await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .middleware(
            middleware::retry::RetryLayer::builder(2)
                .per_try_timeout(Duration::from_millis(300))
                .build()
                .unwrap(),
        )
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let post = tokio::time::timeout(SHORT_GUARD, status_of(addr, post(addr, "/", "x")))
        .await
        .expect("answered within the short guard");
    assert_eq!(post, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(up.requests(), 1, "a POST is not sent twice");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upload_outliving_the_request_deadline_is_cut_with_504() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = ScriptedUpstream::start().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .request_timeout(Duration::from_millis(300))
        .spawn()
        .await
        .unwrap();
    let client = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let (mut read, mut write) = client.into_split();
    // A chunked upload that trickles a byte every 50 ms for up to 10 s.
    let uploader = tokio::spawn(async move {
        let head = b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        if write.write_all(head).await.is_err() {
            return;
        }
        for _ in 0..200 {
            if write.write_all(b"1\r\nx\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(SHORT_GUARD, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the proxy ended the exchange before the upload did"
    );
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 504"), "{seen}");
    assert!(
        !up.script.answered(),
        "the upstream never got the whole upload"
    );
    uploader.abort();
    proxy.shutdown().await;
}
