//! Shared helpers for the end-to-end tests: real TCP clients on 127.0.0.1, raw sockets for
//! malformed input, and streaming bodies driven by the test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The body type the test clients send.
pub type ClientBody = BoxBody<Bytes, Infallible>;

pub mod redis_server;
pub mod scripted;

pub use scripted::{Script, ScriptedUpstream};

/// A deadline for steps that would otherwise hang when the code under test is broken. It guards
/// against deadlock only; no test asserts how long anything took.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Installs a `tracing` subscriber once (set `RUST_LOG` to see the servers' logs).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A whole body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into()).boxed()
}

/// An empty body.
pub fn empty() -> ClientBody {
    full(Bytes::new())
}

/// A body whose chunks the test sends one at a time; dropping the sender ends it.
pub fn channel_body() -> (mpsc::Sender<Bytes>, ClientBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let frames = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(frames).boxed())
}

/// One HTTP/1.1 connection to `addr`; every request sent on it reuses the same socket.
pub async fn h1_connection(addr: SocketAddr) -> http1::SendRequest<ClientBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One HTTP/2 connection with prior knowledge (h2c) to `addr`.
pub async fn h2c_connection(addr: SocketAddr) -> http2::SendRequest<ClientBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<ClientBody>) -> Response<Incoming> {
    let mut conn = h1_connection(addr).await;
    conn.send_request(req).await.expect("request")
}

/// `GET http://addr{path}` on a fresh connection, returning status and body text.
pub async fn http_get(addr: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let res = send(addr, get_request(addr, path)).await;
    let status = res.status();
    (status, body_text(res).await)
}

/// The status of `GET http://addr{path}` (body read), bounded by [`HANG_GUARD`].
pub async fn get_status(addr: SocketAddr, path: &str) -> http::StatusCode {
    tokio::time::timeout(HANG_GUARD, http_get(addr, path))
        .await
        .expect("answered within the hang guard")
        .0
}

/// A `GET` request for `path` with a `Host` header.
pub fn get_request(addr: SocketAddr, path: &str) -> Request<ClientBody> {
    Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(empty())
        .expect("request")
}

/// Collects a response body as text.
pub async fn body_text(res: Response<Incoming>) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Writes `raw` on a new connection and returns everything the server sent before it closed
/// the connection (or until the first response is complete when it keeps it open).
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading all of a large head: ignore write errors.
    let _ = stream.write_all(raw).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code on the first line of a raw HTTP/1 response.
pub fn raw_status(raw: &str) -> Option<u16> {
    raw.split_whitespace().nth(1)?.parse().ok()
}

/// Sends a request whose head carries a 64 KiB header and asserts the answer is `431`.
pub async fn assert_oversized_head_gets_431(addr: SocketAddr) {
    let big = "a".repeat(64 * 1024);
    let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    let answer = raw_exchange(addr, raw.as_bytes()).await;
    assert_eq!(
        raw_status(&answer),
        Some(431),
        "got {:?}",
        &answer[..answer.len().min(200)]
    );
}

fn response_complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..head_end]
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    out.len() >= head_end + 4 + length
}

/// `GET path` with this `Host` header on a fresh connection to `addr`, returning status and
/// body text.
pub async fn get_with_host(addr: SocketAddr, host: &str, path: &str) -> (http::StatusCode, String) {
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(empty())
        .expect("request");
    let res = send(addr, req).await;
    let status = res.status();
    (status, body_text(res).await)
}

/// An address on 127.0.0.1 that refuses connections: a port bound and released at once.
pub fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// Uploads `mib` MiB to `addr{path}` with a `Content-Length`, sending the first MiB, then waiting
/// for `first_seen` (fired by the receiving service when it gets its first chunk) before the
/// rest. A server or proxy that buffered the whole request body would never fire it, so the
/// upload would stop at the hang guard. Returns the response status and body text.
pub async fn upload_streaming(
    addr: SocketAddr,
    path: &str,
    mib: usize,
    first_seen: tokio::sync::oneshot::Receiver<()>,
) -> (http::StatusCode, String) {
    let (tx, body) = channel_body();
    let req = Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(
            http::header::CONTENT_LENGTH,
            (mib * 1024 * 1024).to_string(),
        )
        .body(body)
        .expect("request");
    let mut conn = h1_connection(addr).await;
    let response = tokio::spawn(async move { conn.send_request(req).await });

    let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
    tx.send(chunk.clone()).await.expect("first chunk");
    tokio::time::timeout(HANG_GUARD, first_seen)
        .await
        .expect("the receiver saw the first chunk before the client sent the rest")
        .expect("first-chunk signal");
    for _ in 1..mib {
        tx.send(chunk.clone()).await.expect("chunk");
    }
    drop(tx);
    let res = tokio::time::timeout(HANG_GUARD, response)
        .await
        .expect("response in time")
        .expect("client task")
        .expect("response");
    let status = res.status();
    (status, body_text(res).await)
}

/// Reads from `stream` until the server closes it (end of stream or reset), for at most
/// `within`. Returns what was read, or `None` when the connection was still open then.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(out)
}

/// Reads one complete response (head and `Content-Length` body) from a kept-open `stream`.
pub async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !response_complete(&out) {
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response after {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until `count()` reads 0 (polling every 10 ms), for at most the hang guard. Returns
/// whether it did.
pub async fn eventually_zero(count: impl Fn() -> usize) -> bool {
    let wait = async {
        while count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait).await.is_ok()
}
