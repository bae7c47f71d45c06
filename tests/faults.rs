//! Fault injection, end to end: `PingoraProxy` with all four layers in front of upstreams that
//! misbehave on purpose (raw `tokio` TCP servers on 127.0.0.1:0 that reset, truncate, stall,
//! answer garbage or close), and `ServeTower` / the proxy facing hostile raw-TCP clients
//! (aborts, pipelining, dribbled heads, half-close, oversized heads, broken chunked bodies).
//!
//! What every case requires:
//! - the client gets a clean status or a clean close: never a `200` whose body mixes two
//!   upstream answers, never a response whose framing lies (a body shorter than its
//!   `Content-Length` is only acceptable when the connection is closed right after, so the
//!   client can tell it is incomplete);
//! - a non-idempotent request (`POST`) reaches the upstream at most once;
//! - client behaviour moves neither the circuit breaker nor the rate limiter;
//! - the server keeps serving (a normal `GET` afterwards gets `200`);
//! - no connection or task is leaked: `RunningServer::active_connections` returns to 0, and a
//!   proxy (whose `RunningProxy` has no such count) shuts down well inside a bound.
//!
//! Every wait is bounded, so a hang fails the test instead of blocking CI. To shake out
//! flakiness, run the file 20 times in a row:
//!
//! ```sh
//! for i in $(seq 20); do cargo test -p pingora-tower-test-support --test faults || break; done
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request as AxumRequest;
use axum::routing::{any, get};
use axum::Router;
use pingora_tower::middleware::circuit_breaker::{
    CircuitBreakerHandle, CircuitBreakerLayer, State as BreakerState, Window,
};
use pingora_tower::middleware::rate_limit::RateLimitLayer;
use pingora_tower::middleware::{self, retry::RetryLayer};
use pingora_tower::proxy::{PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower::{server, RunningServer, ServeTower};
use pingora_tower_test_support::init_tracing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bound on one client exchange (connect, write, read to the end). Generous: it only turns a
/// hang into a failure.
const EXCHANGE: Duration = Duration::from_secs(5);
/// Bound on a proxy's shutdown once every client has gone: a leaked connection or task holds
/// the shutdown for its whole 30 s grace period and fails here instead.
const DRAIN: Duration = Duration::from_secs(3);
/// The proxy's whole-request deadline (timeout layer).
const TIMEOUT_MS: u64 = 400;
/// How long a "slow" upstream waits before answering; under `TIMEOUT_MS`, so the upstream is
/// never at fault for a request that the client abandoned.
const SLOW: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Faulty upstreams
// ---------------------------------------------------------------------------------------------

/// What a raw upstream does with one request.
#[derive(Clone, Debug)]
enum Fault {
    /// `200` with this body and its exact `Content-Length`; the connection stays open.
    Answer(&'static [u8]),
    /// This status with an empty body; the connection stays open.
    Status(u16),
    /// `200` with `Content-Length: 10`, 4 bytes of body, then a reset (`SO_LINGER` 0).
    ResetMidBody,
    /// `200` with `Content-Length: 10`, 4 bytes of body, then a plain close (FIN).
    TruncateMidBody,
    /// Nothing until the proxy goes away (or a long bound passes).
    StallBeforeHead,
    /// Bytes that are not HTTP, then a close.
    Garbage,
    /// A close right after reading the request.
    CloseBeforeHead,
    /// Waits `SLOW`, then answers like `Answer`.
    Slow(&'static [u8]),
    /// A `103 Early Hints` interim head, then this status with an empty body.
    EarlyHintsThen(u16),
}

/// The first 4 bytes the mid-body faults send (of a declared 10).
const PARTIAL: &[u8] = b"AAAA";
/// The different full answer the splice scenario serves on the next request.
const OTHER: &[u8] = b"BBBBBBBBBB";
/// A healthy answer.
const OK_BODY: &[u8] = b"upstream-ok";

/// One request as the raw upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    /// Requests this upstream received before this one (over all connections).
    index: usize,
}

type Script = dyn Fn(&Seen) -> Fault + Send + Sync;

/// Counters of a raw upstream.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    posts: AtomicUsize,
    /// Requests the upstream finished handling (answered, failed to answer, or gave up on).
    done: AtomicUsize,
}

/// A raw TCP upstream on 127.0.0.1:0 that follows a script per request.
struct RawUpstream {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    fn start(script: impl Fn(&Seen) -> Fault + Send + Sync + 'static) -> RawUpstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("upstream addr");
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let counts = Arc::new(Counts::default());
        let script: Arc<Script> = Arc::new(script);
        let task = tokio::spawn({
            let counts = counts.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counts.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_raw(stream, counts.clone(), script.clone()));
                }
            }
        });
        RawUpstream { addr, counts, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    fn posts(&self) -> usize {
        self.counts.posts.load(Ordering::SeqCst)
    }

    /// The key of this backend's breaker in the proxy.
    fn breaker_key(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves requests on one upstream connection until the script closes it or the peer does.
async fn serve_raw(mut stream: TcpStream, counts: Arc<Counts>, script: Arc<Script>) {
    let mut buf = Vec::new();
    loop {
        let Some((method, path)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let index = counts.requests.fetch_add(1, Ordering::SeqCst);
        if method == "POST" {
            counts.posts.fetch_add(1, Ordering::SeqCst);
        }
        let fault = script(&Seen { path, index });
        let keep_open = act(&mut stream, fault).await;
        counts.done.fetch_add(1, Ordering::SeqCst);
        if !keep_open {
            return;
        }
    }
}

/// Carries out one fault; returns whether the connection may serve another request.
async fn act(stream: &mut TcpStream, fault: Fault) -> bool {
    match fault {
        Fault::Answer(body) => write_ok(stream, body).await,
        Fault::Slow(body) => {
            // The proxy may give up on the request meanwhile: stop early when it closes.
            let mut probe = [0u8; 1];
            match tokio::time::timeout(SLOW, stream.peek(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => false,
                _ => write_ok(stream, body).await,
            }
        }
        Fault::Status(code) => {
            let head = format!("HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\n\r\n");
            stream.write_all(head.as_bytes()).await.is_ok()
        }
        Fault::EarlyHintsThen(code) => {
            let heads = format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                 HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\n\r\n"
            );
            stream.write_all(heads.as_bytes()).await.is_ok()
        }
        Fault::ResetMidBody | Fault::TruncateMidBody => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec();
            out.extend_from_slice(PARTIAL);
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
            // Let the partial answer leave before the connection goes.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if matches!(fault, Fault::ResetMidBody) {
                // Linger 0 makes the close a reset; it does not block (nothing to flush).
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
            } else {
                let _ = stream.shutdown().await;
            }
            false
        }
        Fault::StallBeforeHead => {
            let mut sink = [0u8; 1024];
            // Until the proxy closes its side; bounded so a stuck test still ends.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            false
        }
        Fault::Garbage => {
            let _ = stream
                .write_all(b"\x00\x01this is not http at all\r\n\r\n\xff\xfe")
                .await;
            let _ = stream.shutdown().await;
            false
        }
        Fault::CloseBeforeHead => false,
    }
}

async fn write_ok(stream: &mut TcpStream, body: &[u8]) -> bool {
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await.is_ok()
}

/// Reads one request (head and body by `Content-Length`, or a chunked body up to its last
/// chunk) from `buf` + `stream`; `None` when the connection ends or stays silent first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf, Duration::from_secs(10)).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let length = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    buf.drain(..head_end);
    if let Some(length) = length {
        while buf.len() < length {
            read_more(stream, buf, Duration::from_secs(2)).await?;
        }
        buf.drain(..length);
    } else if chunked {
        loop {
            if let Some(i) = find(buf, b"0\r\n\r\n") {
                buf.drain(..i + 5);
                break;
            }
            // A broken chunked body forwarded in part: answer after a short silence.
            if read_more(stream, buf, Duration::from_millis(300))
                .await
                .is_none()
            {
                buf.clear();
                break;
            }
        }
    }
    Some((method, path))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, idle: Duration) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        _ => None,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// ---------------------------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------------------------

/// A breaker that opens after 4 calls with half of them failed, so a few wrongly counted
/// client faults are enough to open it.
fn touchy_breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .sliding_window(Window::Count(4))
        .minimum_calls(4)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(30))
        .permitted_calls_in_half_open(1)
        .build()
        .expect("breaker config")
}

/// A proxy with the four layers (timeout, rate limit, retry, circuit breaker, outermost first)
/// and its layers' handles.
struct Proxy {
    running: RunningProxy,
    breaker: CircuitBreakerHandle,
    limiter: RateLimitLayer,
}

impl Proxy {
    async fn start(upstream: Upstream) -> Proxy {
        Proxy::with_limiter(upstream, middleware::rate_limit(10_000, 1_000)).await
    }

    async fn with_limiter(upstream: Upstream, limiter: RateLimitLayer) -> Proxy {
        init_tracing();
        let breaker = touchy_breaker();
        let handle = breaker.handle();
        let running = PingoraProxy::builder("127.0.0.1:0")
            .routes([Route::prefix("/", upstream)])
            .with_timeouts(200, 2_000)
            .middleware(middleware::timeout(TIMEOUT_MS))
            .middleware(limiter.clone())
            .middleware(
                RetryLayer::builder(2)
                    .backoff_base(Duration::from_millis(1))
                    .build()
                    .expect("retry config"),
            )
            .middleware(breaker)
            .spawn()
            .await
            .expect("proxy");
        Proxy {
            running,
            breaker: handle,
            limiter,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Asserts the breaker of `up` is closed and has counted no failure.
    fn assert_breaker_untouched(&self, up: &RawUpstream) {
        let key = up.breaker_key();
        let state = self.breaker.state(&key);
        let metrics = self.breaker.metrics(&key);
        assert!(
            matches!(state, None | Some(BreakerState::Closed)),
            "client behaviour moved the breaker of {key}: {metrics:?}"
        );
        if let Some(m) = metrics {
            assert_eq!(
                m.failures, 0,
                "client behaviour counted as upstream failures: {m:?}"
            );
        }
    }

    /// A normal `GET` still gets `200`, then the proxy shuts down within [`DRAIN`] (nothing
    /// left open behind the clients that went away).
    async fn assert_serves_then_drains(self) {
        assert_still_serves(self.addr()).await;
        eventually("every client connection of the proxy ended", || {
            self.running.active_connections() == 0
        })
        .await;
        tokio::time::timeout(DRAIN, self.running.shutdown())
            .await
            .expect("the proxy drained: no connection or task left behind by the faults");
    }
}

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

/// One response as read off the wire.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The body is whole by its framing (`Content-Length` met, or the last chunk read).
    complete: bool,
}

/// What one read of a response came to.
#[derive(Debug)]
enum Reply {
    /// The server closed without sending anything.
    Closed,
    /// A response (complete, or cut by a close).
    Response(RawResponse),
}

/// Parses one response at the start of `buf`: `Ok(None)` while more bytes are needed,
/// `Ok(Some((response, consumed)))` when whole.
fn parse_response(buf: &[u8]) -> Result<Option<(RawResponse, usize)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
            return Err(format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(buf)
            ));
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 status line: {head:?}"));
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status code in {head:?}"))?;
    let response = |body: Vec<u8>, complete| RawResponse {
        status,
        head: head.clone(),
        body,
        complete,
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((response(Vec::new(), true), head_end)));
    }
    let rest = &buf[head_end..];
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let Some(line_end) = find(&rest[at..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = String::from_utf8_lossy(&rest[at..at + line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?} in the response"))?;
            at += line_end + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                if rest.len() < at + 2 {
                    return Ok(None);
                }
                return Ok(Some((response(body, true), head_end + at + 2)));
            }
            if rest.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    match header(&head, "content-length") {
        Some(v) => {
            let length: usize = v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?;
            if rest.len() < length {
                return Ok(None);
            }
            Ok(Some((
                response(rest[..length].to_vec(), true),
                head_end + length,
            )))
        }
        // Delimited by the close: never complete before it.
        None => Ok(None),
    }
}

/// A raw connection that reads responses one after another.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let stream = tokio::time::timeout(EXCHANGE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`, ignoring a write error (the server may answer and close early).
    async fn write(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(EXCHANGE, self.stream.write_all(bytes)).await;
    }

    /// Reads the next response. A body cut short is only accepted when the server closed the
    /// connection after it (so a client can tell); a server that neither completes nor
    /// closes within [`EXCHANGE`] fails the test, as does anything that is not HTTP.
    async fn read_response(&mut self) -> Reply {
        let deadline = tokio::time::Instant::now() + EXCHANGE;
        loop {
            match parse_response(&self.buf) {
                Err(e) => panic!("misframed response: {e}"),
                Ok(Some((response, used))) => {
                    self.buf.drain(..used);
                    if (100..200).contains(&response.status) {
                        continue;
                    }
                    return Reply::Response(response);
                }
                Ok(None) => {}
            }
            let mut chunk = [0u8; 8192];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => panic!(
                    "no complete response and no close within {EXCHANGE:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                // Closed (FIN or reset): whatever came is all there is.
                Ok(_) => return self.closed(),
            }
        }
    }

    /// The reply once the server closed: nothing, or a response cut short by the close.
    fn closed(&mut self) -> Reply {
        if self.buf.is_empty() {
            return Reply::Closed;
        }
        let Some(head_end) = find(&self.buf, b"\r\n\r\n").map(|i| i + 4) else {
            panic!(
                "the connection closed inside a response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {head:?}"));
        let chunked = header(&head, "transfer-encoding").is_some();
        let body = self.buf[head_end..].to_vec();
        self.buf.clear();
        // A close-delimited body (neither length nor chunked) is complete at the close.
        let complete = !chunked && header(&head, "content-length").is_none();
        Reply::Response(RawResponse {
            status,
            head,
            body,
            complete,
        })
    }
}

fn get_bytes(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: faults.test\r\n\r\n").into_bytes()
}

fn post_bytes(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: faults.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request` on a new connection and reads one reply.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut client = RawClient::connect(addr).await;
    client.write(request).await;
    client.read_response().await
}

/// Asserts a reply is clean: a close, an error status, or a `200` whose body is one of
/// `answers` whole, or a prefix of one of them cut by the close. Never a mix of two.
fn assert_clean(reply: &Reply, answers: &[&[u8]]) {
    let Reply::Response(r) = reply else {
        return;
    };
    if r.status != 200 {
        assert!(
            r.status >= 400,
            "unexpected status {} in {:?}",
            r.status,
            r.head
        );
        return;
    }
    let body = &r.body[..];
    if r.complete {
        assert!(
            answers.contains(&body),
            "a 200 whose body is no single upstream answer (spliced?): {:?}\nhead: {:?}",
            String::from_utf8_lossy(body),
            r.head
        );
    } else {
        assert!(
            answers.iter().any(|a| a.starts_with(body)),
            "a cut 200 whose body is no prefix of a single upstream answer (spliced?): {:?}",
            String::from_utf8_lossy(body)
        );
    }
}

/// A status, or `None` for a close.
fn status(reply: &Reply) -> Option<u16> {
    match reply {
        Reply::Closed => None,
        Reply::Response(r) => Some(r.status),
    }
}

async fn assert_still_serves(addr: SocketAddr) {
    let reply = exchange(addr, &get_bytes("/after")).await;
    match &reply {
        Reply::Response(r) if r.status == 200 && r.complete => {}
        other => panic!("the server stopped serving normal requests: {other:?}"),
    }
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(EXCHANGE, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

// ---------------------------------------------------------------------------------------------
// Faulty upstreams behind the proxy
// ---------------------------------------------------------------------------------------------

/// The splice scenario: the first answer dies mid-body, the next request gets a different
/// full answer. `method` is `GET` (retryable) or `POST` (never resent).
async fn never_splices(fault: Fault, post: bool) {
    let up = RawUpstream::start(move |seen: &Seen| {
        if seen.path == "/after" {
            Fault::Answer(OK_BODY)
        } else if seen.index == 0 {
            fault.clone()
        } else {
            Fault::Answer(OTHER)
        }
    });
    let proxy = Proxy::start(Upstream::new(up.url())).await;
    let request = if post {
        post_bytes("/splice", "payload")
    } else {
        get_bytes("/splice")
    };
    let reply = exchange(proxy.addr(), &request).await;
    assert_clean(&reply, &[OTHER, b"AAAAAAAAAA"]);
    if let Reply::Response(r) = &reply {
        if r.status == 200 && r.complete {
            assert_eq!(r.body, OTHER, "a full 200 can only be the second answer");
        }
    }
    if post {
        assert_eq!(up.posts(), 1, "the POST reached the upstream once");
    }
    proxy.assert_serves_then_drains().await;
}

#[tokio::test]
async fn get_reset_mid_body_is_never_spliced_with_the_next_answer() {
    never_splices(Fault::ResetMidBody, false).await;
}

#[tokio::test]
async fn get_truncated_mid_body_is_never_spliced_with_the_next_answer() {
    never_splices(Fault::TruncateMidBody, false).await;
}

#[tokio::test]
async fn post_reset_mid_body_reaches_the_upstream_once_and_is_never_spliced() {
    never_splices(Fault::ResetMidBody, true).await;
}

#[tokio::test]
async fn post_truncated_mid_body_reaches_the_upstream_once_and_is_never_spliced() {
    never_splices(Fault::TruncateMidBody, true).await;
}

#[tokio::test]
async fn upstream_stalling_before_the_head_gets_504_in_bounded_time() {
    let up = RawUpstream::start(|seen: &Seen| {
        if seen.path == "/after" {
            Fault::Answer(OK_BODY)
        } else {
            Fault::StallBeforeHead
        }
    });
    let proxy = Proxy::start(Upstream::new(up.url())).await;
    let reply = exchange(proxy.addr(), &get_bytes("/stall")).await;
    assert_eq!(status(&reply), Some(504), "{reply:?}");
    assert_clean(&reply, &[]);
    proxy.assert_serves_then_drains().await;
}

#[tokio::test]
async fn upstream_answering_garbage_gets_502() {
    let up = RawUpstream::start(|seen: &Seen| {
        if seen.path == "/after" {
            Fault::Answer(OK_BODY)
        } else {
            Fault::Garbage
        }
    });
    let proxy = Proxy::start(Upstream::new(up.url())).await;
    let reply = exchange(proxy.addr(), &post_bytes("/garbage", "x")).await;
    assert_eq!(status(&reply), Some(502), "{reply:?}");
    assert_clean(&reply, &[]);
    assert_eq!(up.posts(), 1, "the POST reached the upstream once");
    proxy.assert_serves_then_drains().await;
}

#[tokio::test]
async fn upstream_closing_before_the_head_gets_502_and_a_post_reaches_it_once() {
    let up = RawUpstream::start(|seen: &Seen| {
        if seen.path == "/after" {
            Fault::Answer(OK_BODY)
        } else {
            Fault::CloseBeforeHead
        }
    });
    let proxy = Proxy::start(Upstream::new(up.url())).await;
    let reply = exchange(proxy.addr(), &post_bytes("/close", "x")).await;
    assert_eq!(status(&reply), Some(502), "{reply:?}");
    assert_clean(&reply, &[]);
    assert_eq!(up.posts(), 1, "the POST reached the upstream once");
    proxy.assert_serves_then_drains().await;
}

#[tokio::test]
async fn get_to_a_backend_closing_before_the_head_is_retried_on_the_healthy_one() {
    let closing = RawUpstream::start(|_: &Seen| Fault::CloseBeforeHead);
    let healthy = RawUpstream::start(|_: &Seen| Fault::Answer(OK_BODY));
    let proxy = Proxy::start(Upstream::weighted([(closing.url(), 1), (healthy.url(), 1)])).await;
    for _ in 0..4 {
        let reply = exchange(proxy.addr(), &get_bytes("/retry")).await;
        match &reply {
            Reply::Response(r) if r.status == 200 && r.complete => assert_eq!(r.body, OK_BODY),
            other => panic!("expected 200 from the healthy backend, got {other:?}"),
        }
    }
    proxy.assert_serves_then_drains().await;
}

#[tokio::test]
async fn upstream_503_then_200_is_retried_for_get_and_never_spliced() {
    let up = RawUpstream::start(|seen: &Seen| {
        if seen.index == 0 {
            Fault::Status(503)
        } else {
            Fault::Answer(OTHER)
        }
    });
    let proxy = Proxy::start(Upstream::new(up.url())).await;
    let reply = exchange(proxy.addr(), &get_bytes("/503")).await;
    match &reply {
        Reply::Response(r) => {
            assert_eq!((r.status, r.complete), (200, true), "{r:?}");
            assert_eq!(r.body, OTHER);
        }
        Reply::Closed => panic!("closed instead of the retried answer"),
    }
    proxy.assert_serves_then_drains().await;
}

// ---------------------------------------------------------------------------------------------
// Client behaviour must not move the breaker or the limiter
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_aborts_against_a_slow_upstream_leave_the_breaker_closed() {
    let up = RawUpstream::start(|seen: &Seen| {
        if seen.path == "/after" {
            Fault::Answer(OK_BODY)
        } else {
            Fault::Slow(OK_BODY)
        }
    });
    let proxy = Proxy::start(Upstream::new(up.url())).await;
    const ABORTS: usize = 6;
    let mut clients = Vec::new();
    for i in 0..ABORTS {
        let mut client = RawClient::connect(proxy.addr()).await;
        let request = if i % 2 == 0 {
            get_bytes("/slow")
        } else {
            post_bytes("/slow", "abandoned")
        };
        client.write(&request).await;
        clients.push(client);
    }
    eventually("the upstream saw every request", || up.requests() == ABORTS).await;
    drop(clients);
    eventually("the upstream finished every request", || {
        up.counts.done.load(Ordering::SeqCst) == ABORTS
    })
    .await;
    // Give the proxy a moment to notice the closes and settle each request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        up.posts(),
        ABORTS / 2,
        "each abandoned POST reached the upstream once"
    );
    proxy.assert_breaker_untouched(&up);
    assert_eq!(proxy.limiter.stats().rejected, 0);
    proxy.assert_serves_then_drains().await;
}

#[tokio::test]
async fn broken_client_requests_spend_no_rate_limit_quota() {
    let up = RawUpstream::start(|_: &Seen| Fault::Answer(OK_BODY));
    let limiter = RateLimitLayer::builder(3, Duration::from_secs(60))
        .build()
        .expect("limiter config");
    let proxy = Proxy::with_limiter(Upstream::new(up.url()), limiter).await;
    // Requests that never became requests: aborted inside the head, and not HTTP at all.
    for _ in 0..3 {
        let mut client = RawClient::connect(proxy.addr()).await;
        client.write(b"GET /half HTTP/1.1\r\nHost: fau").await;
        drop(client);
        let mut client = RawClient::connect(proxy.addr()).await;
        client
            .write(b"\x16\x03\x01 definitely not http\r\n\r\n")
            .await;
        let reply = client.read_response().await;
        assert!(
            matches!(status(&reply), None | Some(400..=499)),
            "{reply:?}"
        );
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
    for i in 0..3 {
        let reply = exchange(proxy.addr(), &get_bytes("/quota")).await;
        assert_eq!(
            status(&reply),
            Some(200),
            "request {i} of the quota: {reply:?}"
        );
    }
    let running = proxy.running;
    tokio::time::timeout(DRAIN, running.shutdown())
        .await
        .expect("the proxy drained");
}

#[tokio::test]
async fn upstream_faults_do_open_the_breaker_so_the_counting_works() {
    // The counterpart of the client-abort test: the same breaker does see upstream failures.
    assert_four_posts_open_the_breaker(Fault::CloseBeforeHead).await;
}

/// An interim `103` head is not the answer: the final `500` behind it is what the breaker
/// counts (a layer that took the `103` for the response counted a success and missed it).
#[tokio::test]
async fn failures_behind_an_interim_head_still_open_the_breaker() {
    assert_four_posts_open_the_breaker(Fault::EarlyHintsThen(500)).await;
}

/// Four `POST`s (never retried) to an upstream answering each with `fault`: each a clean
/// failure, and the breaker open after them.
async fn assert_four_posts_open_the_breaker(fault: Fault) {
    let up = RawUpstream::start(move |_: &Seen| fault.clone());
    let proxy = Proxy::start(Upstream::new(up.url())).await;
    for _ in 0..4 {
        let reply = exchange(proxy.addr(), &post_bytes("/fail", "x")).await;
        assert_clean(&reply, &[]);
    }
    assert_eq!(up.posts(), 4, "every request reached the upstream once");
    assert_eq!(
        proxy.breaker.state(&up.breaker_key()),
        Some(BreakerState::Open),
        "{:?}",
        proxy.breaker.metrics(&up.breaker_key())
    );
    let running = proxy.running;
    tokio::time::timeout(DRAIN, running.shutdown())
        .await
        .expect("the proxy drained");
}

// ---------------------------------------------------------------------------------------------
// Hostile clients, against the proxy and against ServeTower
// ---------------------------------------------------------------------------------------------

/// Where a hostile-client case runs.
enum Target {
    Proxy(Proxy, RawUpstream),
    Serve(RunningServer, Arc<AtomicUsize>),
}

impl Target {
    /// The proxy (four layers) in front of a healthy raw upstream that echoes its path's
    /// answer; `/slow` is answered after [`SLOW`].
    async fn proxy() -> Target {
        let up = RawUpstream::start(|seen: &Seen| match seen.path.as_str() {
            "/slow" => Fault::Slow(OK_BODY),
            "/one" => Fault::Answer(b"one"),
            "/two" => Fault::Answer(b"two"),
            _ => Fault::Answer(OK_BODY),
        });
        let proxy = Proxy::start(Upstream::new(up.url())).await;
        Target::Proxy(proxy, up)
    }

    /// An axum app on `ServeTower` with the same answers; `/echo` returns the request body
    /// (and counts the bodies it read whole).
    async fn serve() -> Target {
        init_tracing();
        let posts = Arc::new(AtomicUsize::new(0));
        let counted = posts.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(SLOW).await;
                    OK_BODY
                }),
            )
            .route("/one", get(|| async { "one" }))
            .route("/two", get(|| async { "two" }))
            .route(
                "/echo",
                any(move |req: AxumRequest| {
                    let counted = counted.clone();
                    async move {
                        let body = axum::body::to_bytes(req.into_body(), 1 << 20).await;
                        match body {
                            Ok(b) => {
                                counted.fetch_add(1, Ordering::SeqCst);
                                (http::StatusCode::OK, b)
                            }
                            Err(_) => (http::StatusCode::BAD_REQUEST, Bytes::new()),
                        }
                    }
                }),
            )
            .fallback(|| async { OK_BODY });
        let server = server::spawn("127.0.0.1:0", ServeTower::new(app))
            .await
            .expect("spawn");
        Target::Serve(server, posts)
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Target::Proxy(p, _) => p.addr(),
            Target::Serve(s, _) => s.local_addr(),
        }
    }

    /// Requests (`POST`s for the server) that reached the backend.
    fn posts(&self) -> usize {
        match self {
            Target::Proxy(_, up) => up.posts(),
            Target::Serve(_, posts) => posts.load(Ordering::SeqCst),
        }
    }

    /// Still serves, leaves nothing behind, and the proxy's breaker saw no failure.
    async fn finish(self) {
        match self {
            Target::Proxy(proxy, up) => {
                proxy.assert_breaker_untouched(&up);
                proxy.assert_serves_then_drains().await;
            }
            Target::Serve(server, _) => {
                assert_still_serves(server.local_addr()).await;
                eventually("every connection of the server ended", || {
                    server.active_connections() == 0
                })
                .await;
                tokio::time::timeout(DRAIN, server.shutdown())
                    .await
                    .expect("the server drained");
            }
        }
    }
}

async fn client_abort_while_the_backend_is_slow(target: Target) {
    for _ in 0..4 {
        let mut client = RawClient::connect(target.addr()).await;
        client.write(&get_bytes("/slow")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(client);
    }
    // Let the slow answers come and go (or be dropped).
    tokio::time::sleep(SLOW + Duration::from_millis(100)).await;
    target.finish().await;
}

/// Clients that send a head announcing 1000 bytes of body, send 10, and go away.
async fn client_abort_mid_upload(target: Target) {
    let mut raw =
        b"POST /echo HTTP/1.1\r\nHost: faults.test\r\nContent-Length: 1000\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'u'; 10]);
    for _ in 0..4 {
        let mut client = RawClient::connect(target.addr()).await;
        client.write(&raw).await;
        // Long enough for the head and the first bytes to reach the backend.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        target.posts(),
        0,
        "an incomplete upload reached the backend as a whole request"
    );
    target.finish().await;
}

async fn pipelined_requests_get_complete_answers_in_order(target: Target) {
    let mut client = RawClient::connect(target.addr()).await;
    let mut both = get_bytes("/one");
    both.extend_from_slice(&get_bytes("/two"));
    client.write(&both).await;
    let first = client.read_response().await;
    match &first {
        Reply::Response(r) => {
            assert_eq!((r.status, r.complete), (200, true), "{r:?}");
            assert_eq!(r.body, b"one");
        }
        Reply::Closed => panic!("no answer to the first pipelined request"),
    }
    // The second is answered whole, or the connection closes cleanly.
    let second = client.read_response().await;
    match &second {
        Reply::Closed => {}
        Reply::Response(r) => {
            assert_eq!((r.status, r.complete), (200, true), "{r:?}");
            assert_eq!(r.body, b"two");
        }
    }
    drop(client);
    target.finish().await;
}

async fn dribbled_head_is_answered(target: Target) {
    let mut client = RawClient::connect(target.addr()).await;
    for byte in get_bytes("/one") {
        client.write(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let reply = client.read_response().await;
    match &reply {
        Reply::Response(r) => {
            assert_eq!((r.status, r.complete), (200, true), "{r:?}");
            assert_eq!(r.body, b"one");
        }
        Reply::Closed => panic!("closed instead of answering the dribbled head"),
    }
    drop(client);
    target.finish().await;
}

/// A client that shuts down its sending side after a full request gets the whole answer from
/// ServeTower. The proxy, like nginx (`proxy_ignore_client_abort off`), takes the end of the
/// client's stream while it waits for the upstream as the client leaving and closes cleanly;
/// either way nothing is misframed and the breaker does not move (checked in `finish`).
async fn half_closed_client_gets_its_response_or_a_clean_close(target: Target) {
    let mut client = RawClient::connect(target.addr()).await;
    client.write(&get_bytes("/slow")).await;
    client.stream.shutdown().await.expect("shutdown write");
    let reply = client.read_response().await;
    match (&reply, &target) {
        (Reply::Response(r), _) => {
            assert_eq!((r.status, r.complete), (200, true), "{r:?}");
            assert_eq!(r.body, OK_BODY);
        }
        (Reply::Closed, Target::Proxy(..)) => {}
        (Reply::Closed, Target::Serve(..)) => {
            panic!("ServeTower gave a half-closed client no response")
        }
    }
    drop(client);
    target.finish().await;
}

async fn oversized_head_gets_431(target: Target) {
    let big = "a".repeat(64 * 1024);
    let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    let reply = exchange(target.addr(), raw.as_bytes()).await;
    assert_eq!(status(&reply), Some(431), "{reply:?}");
    target.finish().await;
}

/// A chunked upload whose framing is broken gets 400 or a close, never a 200 that pretends
/// the body was fine, and the backend never sees it as a whole request twice.
async fn broken_chunked_upload(target: Target, body: &[u8]) {
    let mut raw =
        b"POST /echo HTTP/1.1\r\nHost: faults.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(body);
    let mut client = RawClient::connect(target.addr()).await;
    client.write(&raw).await;
    let reply = client.read_response().await;
    match &reply {
        Reply::Closed => {}
        Reply::Response(r) => {
            assert!(
                r.status == 400 || r.status == 413 || r.status >= 500,
                "a broken chunked upload got {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    assert!(target.posts() <= 1, "the upload reached the backend twice");
    drop(client);
    target.finish().await;
}

/// A chunk size that is not hex.
const GARBAGE_CHUNK: &[u8] = b"zz\r\nhello\r\n0\r\n\r\n";
/// A chunk size far beyond anything addressable.
const HUGE_CHUNK: &[u8] = b"ffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n";
/// Chunk data longer than its size and no CRLF after it.
const MALFORMED_CHUNK: &[u8] = b"5\r\nhelloEXTRA0\r\n\r\n";

macro_rules! on_both {
    ($($name:ident => $case:expr;)*) => {
        mod proxy_faces {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let case = $case;
                    case(Target::proxy().await).await;
                }
            )*
        }
        mod serve_tower_faces {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let case = $case;
                    case(Target::serve().await).await;
                }
            )*
        }
    };
}

on_both! {
    client_abort_while_the_backend_is_slow_leaves_nothing_behind => super::client_abort_while_the_backend_is_slow;
    client_abort_mid_upload_leaves_nothing_behind => super::client_abort_mid_upload;
    pipelined_requests_get_complete_answers_in_order_or_a_clean_close => super::pipelined_requests_get_complete_answers_in_order;
    dribbled_head_is_answered => super::dribbled_head_is_answered;
    half_closed_client_gets_its_response_or_a_clean_close => super::half_closed_client_gets_its_response_or_a_clean_close;
    oversized_head_gets_431 => super::oversized_head_gets_431;
    garbage_chunk_size_gets_400_or_a_close => |t| broken_chunked_upload(t, GARBAGE_CHUNK);
    oversized_chunk_size_gets_400_or_a_close => |t| broken_chunked_upload(t, HUGE_CHUNK);
    malformed_chunked_upload_gets_400_or_a_close => |t| broken_chunked_upload(t, MALFORMED_CHUNK);
}
