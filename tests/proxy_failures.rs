//! Whose failure is it: the proxy retries and counts only the upstream's failures, and never
//! hands the client a response spliced from two upstream answers. Real TCP on 127.0.0.1; the
//! faulty upstream is a raw socket server, the slow one an axum app on `ServeTower`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use pingora_tower::middleware::circuit_breaker::{
    CircuitBreakerLayer, State as BreakerState, Window,
};
use pingora_tower::middleware::timeout::TimeoutLayer;
use pingora_tower::middleware::{self};
use pingora_tower::proxy::{PingoraProxy, Route, Upstream};
use pingora_tower::{server, RunningServer, ServeTower};
use pingora_tower_test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// An upstream that answers its first connection with a head promising 10 bytes, sends 4 and
/// closes, and every later connection with a complete, different 10-byte body.
struct Truncating {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Truncating {
    async fn start() -> Truncating {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    read_head(&mut stream).await;
                    let answer: &[u8] = if n == 0 {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nAAAA"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nBBBBBBBBBB"
                    };
                    let _ = stream.write_all(answer).await;
                    let _ = stream.flush().await;
                    // Closing here ends the first answer 6 bytes short.
                });
            }
        });
        Truncating { addr, connections }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Everything the proxy sends on one connection for one GET, until it closes.
async fn raw_get_until_close(addr: SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = stream.read_to_end(&mut out);
    let _ = tokio::time::timeout(HANG_GUARD, read).await;
    out
}

fn body_of(raw: &[u8]) -> &[u8] {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    &raw[at + 4..]
}

async fn assert_never_spliced(addr: SocketAddr, upstream: &Truncating) {
    let raw = raw_get_until_close(addr).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The client sees the truncated answer end early (4 of 10 bytes, then a close), never the
    // rest made up from the second answer.
    assert_eq!(body_of(&raw), b"AAAA", "{text}");
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "no second attempt once the response started"
    );
}

#[tokio::test]
async fn a_retry_layer_never_splices_a_second_answer_onto_a_started_response() {
    init_tracing();
    let upstream = Truncating::start().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(upstream.url()))])
        .middleware(middleware::retry(2))
        .spawn()
        .await
        .unwrap();
    assert_never_spliced(proxy.local_addr(), &upstream).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn failover_never_splices_a_second_answer_onto_a_started_response() {
    init_tracing();
    // Two backends on one upstream: the base proxy's own failover must not retry either.
    let upstream = Truncating::start().await;
    let other = Truncating::start().await;
    other.connections.store(1, Ordering::SeqCst); // it answers in full
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::weighted([(upstream.url(), 1_000), (other.url(), 1)]),
        )])
        .spawn()
        .await
        .unwrap();
    let raw = raw_get_until_close(proxy.local_addr()).await;
    let text = String::from_utf8_lossy(&raw);
    let body = body_of(&raw);
    assert!(
        body == b"AAAA" || body == b"BBBBBBBBBB",
        "one upstream's answer, whole or cut short, never both: {text}"
    );
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst) + other.connections.load(Ordering::SeqCst),
        2,
        "one attempt in all"
    );
    proxy.shutdown().await;
}

/// An upstream whose `/slow` answers only when released, counting the requests it got.
struct Slow {
    server: RunningServer,
    hits: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Slow {
    async fn start() -> Slow {
        init_tracing();
        let hits = Arc::new(AtomicUsize::new(0));
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (h, e, r) = (hits.clone(), entered.clone(), release.clone());
        let app = Router::new().route(
            "/slow",
            get(move || async move {
                h.fetch_add(1, Ordering::SeqCst);
                e.notify_one();
                r.notified().await;
                "finally"
            }),
        );
        let server = server::spawn("127.0.0.1:0", ServeTower::new(app))
            .await
            .unwrap();
        Slow {
            server,
            hits,
            entered,
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    fn key(&self) -> String {
        self.server.local_addr().to_string()
    }
}

/// Opens after 4 calls of which half failed.
fn sensitive_breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .sliding_window(Window::Count(4))
        .minimum_calls(4)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn clients_that_give_up_move_no_breaker_and_cost_one_attempt_each() {
    let slow = Slow::start().await;
    let breaker = sensitive_breaker();
    let handle = breaker.handle();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(slow.url()))])
        .middleware(middleware::timeout(10_000))
        .middleware(middleware::retry(2))
        .middleware(breaker)
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for _ in 0..6 {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(HANG_GUARD, slow.entered.notified())
            .await
            .expect("the request reached the upstream");
        drop(client); // the client gives up
    }
    // Let the proxy notice every abort before looking.
    wait_until(|| proxy.active_connections() == 0).await;
    assert_eq!(
        slow.hits.load(Ordering::SeqCst),
        6,
        "no retry for a client that left"
    );
    let metrics = handle.metrics(&slow.key());
    assert_eq!(
        handle.state(&slow.key()),
        Some(BreakerState::Closed),
        "{metrics:?}"
    );
    assert_eq!(metrics.map(|m| m.calls), Some(0), "nothing recorded");
    slow.release.notify_waiters();
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_deadline_the_client_shortened_moves_no_breaker_but_the_servers_own_does() {
    let slow = Slow::start().await;
    let breaker = sensitive_breaker();
    let handle = breaker.handle();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(slow.url()))])
        .middleware(TimeoutLayer::new(Duration::from_millis(400)).honor_client_header(true))
        .middleware(middleware::retry(2))
        .middleware(breaker)
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for _ in 0..6 {
        let req = http::Request::get("/slow")
            .header("host", "t")
            .header("x-request-timeout", "50")
            .body(empty())
            .unwrap();
        let res = tokio::time::timeout(HANG_GUARD, send(addr, req))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
    }
    let metrics = handle.metrics(&slow.key());
    assert_eq!(metrics.map(|m| m.calls), Some(0), "{metrics:?}");
    assert_eq!(handle.state(&slow.key()), Some(BreakerState::Closed));

    // The server's own deadline is the upstream's failure.
    for _ in 0..4 {
        let (status, _) = tokio::time::timeout(HANG_GUARD, http_get(addr, "/slow"))
            .await
            .unwrap();
        assert_eq!(status, 504);
    }
    assert_eq!(handle.state(&slow.key()), Some(BreakerState::Open));
    slow.release.notify_waiters();
    proxy.shutdown().await;
}

/// Polls `done` until it holds, failing after the hang guard.
async fn wait_until(mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG_GUARD, "condition never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An upstream that answers the first request of each connection in full (keep-alive by its
/// headers) and drops the connection on the second without a word: the proxy's next request on
/// the pooled connection fails the way a stale connection does.
async fn one_answer_per_connection() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                read_head(&mut stream).await; // the reused connection's request: dropped
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried_fresh_not_a_crash() {
    init_tracing();
    let (addr, requests) = one_answer_per_connection().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(format!("http://{addr}")))])
        .middleware(middleware::retry(2))
        .spawn()
        .await
        .unwrap();
    for i in 0..5 {
        let (status, body) = tokio::time::timeout(HANG_GUARD, http_get(proxy.local_addr(), "/"))
            .await
            .unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"), "request {i}");
    }
    assert!(requests.load(Ordering::SeqCst) >= 5);
    proxy.shutdown().await;
}
