//! `ServeTower` end to end: axum Routers on a Pingora listener, real TCP on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request as AxumRequest, State};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::stream;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use pingora_tower::server::{self, ListenOptions};
use pingora_tower::{RunningServer, ServeTower};
use pingora_tower_test_support::*;
use tokio::sync::{mpsc, oneshot, Notify};

const MIB: usize = 1024 * 1024;

async fn start(app: Router) -> RunningServer {
    init_tracing();
    server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .expect("spawn")
}

fn explode() -> &'static str {
    panic!("handler exploded")
}

fn basic_app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/panic", get(|| async { explode() }))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/version",
            get(|req: AxumRequest| async move { format!("{:?}", req.version()) }),
        )
}

#[tokio::test]
async fn get_and_post_over_real_tcp() {
    let running = start(basic_app()).await;
    let addr = running.local_addr();
    assert_eq!(
        http_get(addr, "/").await,
        (StatusCode::OK, "hello".to_owned())
    );

    let req = Request::post("/echo")
        .header("host", "test")
        .body(full("ping body"))
        .unwrap();
    let res = send(addr, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_text(res).await, "ping body");

    assert_eq!(http_get(addr, "/missing").await.0, StatusCode::NOT_FOUND);
    running.shutdown().await;
}

#[tokio::test]
async fn head_request_gets_headers_without_body() {
    let running = start(basic_app()).await;
    let req = Request::head("/")
        .header("host", "t")
        .body(empty())
        .unwrap();
    let res = send(running.local_addr(), req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-length"], "5");
    assert!(body_text(res).await.is_empty());
    running.shutdown().await;
}

#[tokio::test]
async fn client_address_reaches_connect_info() {
    let running = start(basic_app()).await;
    let (status, peer) = http_get(running.local_addr(), "/peer").await;
    assert_eq!(status, StatusCode::OK);
    let peer: SocketAddr = peer.parse().expect("a socket address");
    assert_eq!(peer.ip().to_string(), "127.0.0.1");
    assert_ne!(peer.port(), running.local_addr().port());
    running.shutdown().await;
}

/// The handler reports the first chunk it sees; the client sends the rest of 64 MiB only after
/// that report, so a server that buffered the whole body would never get there.
#[tokio::test]
async fn large_request_body_streams_to_the_service() {
    struct Seen {
        first_chunk: Mutex<Option<oneshot::Sender<()>>>,
    }
    let (first_tx, first_rx) = oneshot::channel();
    let state = Arc::new(Seen {
        first_chunk: Mutex::new(Some(first_tx)),
    });
    let app = Router::new()
        .route(
            "/upload",
            post(|State(seen): State<Arc<Seen>>, body: Body| async move {
                let mut body = body.into_data_stream();
                let mut total = 0usize;
                while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                    total += chunk.expect("chunk").len();
                    if let Some(tx) = seen.first_chunk.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
                total.to_string()
            }),
        )
        .with_state(state);
    let running = start(app).await;

    let (status, body) = upload_streaming(running.local_addr(), "/upload", 64, first_rx).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, (64 * MIB).to_string());
    running.shutdown().await;
}

/// The service produces the second and later chunks only after the client has received the
/// first bytes, so a server that buffered the whole response would never send anything.
#[tokio::test]
async fn large_response_body_streams_to_the_client() {
    let client_got_bytes = Arc::new(Notify::new());
    let produced = Arc::new(AtomicUsize::new(0));
    let app = {
        let client_got_bytes = client_got_bytes.clone();
        let produced = produced.clone();
        Router::new().route(
            "/download",
            get(move || {
                let client_got_bytes = client_got_bytes.clone();
                let produced = produced.clone();
                async move {
                    let chunks = stream::unfold(0usize, move |i| {
                        let client_got_bytes = client_got_bytes.clone();
                        let produced = produced.clone();
                        async move {
                            if i == 64 {
                                return None;
                            }
                            if i == 1 {
                                client_got_bytes.notified().await;
                            }
                            produced.fetch_add(1, Ordering::SeqCst);
                            Some((Ok::<_, std::io::Error>(Bytes::from(vec![1u8; MIB])), i + 1))
                        }
                    });
                    Body::from_stream(chunks)
                }
            }),
        )
    };
    let running = start(app).await;
    let res = send(
        running.local_addr(),
        get_request(running.local_addr(), "/download"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["transfer-encoding"], "chunked");
    let mut body = res.into_body();
    let first = tokio::time::timeout(HANG_GUARD, body.frame())
        .await
        .expect("first bytes arrived before the service produced the rest")
        .unwrap()
        .unwrap();
    let mut total = first.into_data().map(|d| d.len()).unwrap_or(0);
    assert!(produced.load(Ordering::SeqCst) < 64);
    client_got_bytes.notify_one();
    while let Some(frame) = tokio::time::timeout(HANG_GUARD, body.frame())
        .await
        .unwrap()
    {
        total += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(total, 64 * MIB);
    running.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_100_requests_on_one_connection() {
    let running = start(basic_app()).await;
    let addr = running.local_addr();
    let mut conn = h1_connection(addr).await;
    let mut peers = std::collections::HashSet::new();
    for _ in 0..100 {
        conn.ready().await.expect("connection still open");
        let res = conn.send_request(get_request(addr, "/peer")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        peers.insert(body_text(res).await);
    }
    assert_eq!(
        peers.len(),
        1,
        "all 100 requests came from one client socket"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn two_hundred_concurrent_connections_all_succeed() {
    let running = start(basic_app()).await;
    let addr = running.local_addr();
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { http_get(addr, "/peer").await }))
        .collect();
    let mut peers = std::collections::HashSet::new();
    for task in tasks {
        let (status, peer) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        peers.insert(peer);
    }
    assert_eq!(peers.len(), 200);
    running.shutdown().await;
}

#[tokio::test]
async fn malformed_request_line_gets_400_and_server_keeps_serving() {
    let running = start(basic_app()).await;
    let addr = running.local_addr();
    let raw = raw_exchange(addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(raw_status(&raw), Some(400), "got {raw:?}");
    assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    running.shutdown().await;
}

#[tokio::test]
async fn oversized_header_gets_431_and_server_keeps_serving() {
    let running = start(basic_app()).await;
    let addr = running.local_addr();
    assert_oversized_head_gets_431(addr).await;
    assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    running.shutdown().await;
}

#[tokio::test]
async fn handler_panic_gives_500_and_server_keeps_serving() {
    let running = start(basic_app()).await;
    let addr = running.local_addr();
    assert_eq!(
        http_get(addr, "/panic").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        http_get(addr, "/").await,
        (StatusCode::OK, "hello".to_owned())
    );
    running.shutdown().await;
}

#[tokio::test]
async fn service_error_gives_500() {
    init_tracing();
    let svc = tower::service_fn(|_req: Request<pingora_tower::PingoraBody>| async {
        Err::<http::Response<String>, _>(std::io::Error::other("backend gone"))
    });
    let running = server::spawn("127.0.0.1:0", ServeTower::new(svc))
        .await
        .unwrap();
    assert_eq!(
        http_get(running.local_addr(), "/").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    running.shutdown().await;
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_read() {
    let running = start(basic_app()).await;
    let raw =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(running.local_addr())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(raw).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100"), "got {interim:?}");
    stream.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).ends_with("hello") {
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            n,
            0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    running.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    init_tracing();
    let running = server::spawn("127.0.0.1:0", ServeTower::new(basic_app()).h2c(true))
        .await
        .unwrap();
    let addr = running.local_addr();
    let mut conn = h2c_connection(addr).await;
    let req = Request::get(format!("http://{addr}/version"))
        .version(Version::HTTP_2)
        .body(empty())
        .unwrap();
    let res = conn.send_request(req).await.expect("h2 request");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(body_text(res).await, "HTTP/2.0");

    let req = Request::post(format!("http://{addr}/echo"))
        .version(Version::HTTP_2)
        .body(full("over h2"))
        .unwrap();
    let res = conn.send_request(req).await.expect("h2 post");
    assert_eq!(body_text(res).await, "over h2");
    // HTTP/1.1 still works on the same port.
    assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    running.shutdown().await;
}

/// A `/slow` route that reports when a request entered it and answers `finished` only when
/// released, for the shutdown tests.
#[derive(Default)]
struct SlowRoute {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl SlowRoute {
    fn add_to(&self, app: Router) -> Router {
        let (entered, release) = (self.entered.clone(), self.release.clone());
        app.route(
            "/slow",
            get(move || async move {
                entered.notify_one();
                release.notified().await;
                "finished"
            }),
        )
    }

    /// With a request in flight on `/slow`: `stop_accepting` refuses new connections at once,
    /// the in-flight request still completes, and `shutdown` returns.
    async fn assert_drains(&self, mut running: RunningServer) {
        let addr = running.local_addr();
        let in_flight = tokio::spawn(async move { http_get(addr, "/slow").await });
        tokio::time::timeout(HANG_GUARD, self.entered.notified())
            .await
            .unwrap();

        running.stop_accepting().await;
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(
            refused.is_err(),
            "a new connection was accepted after stop_accepting"
        );

        self.release.notify_one();
        let (status, body) = tokio::time::timeout(HANG_GUARD, in_flight)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "finished"));
        tokio::time::timeout(HANG_GUARD, running.shutdown())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let slow = SlowRoute::default();
    let running = start(slow.add_to(Router::new())).await;
    slow.assert_drains(running).await;
}

#[tokio::test]
async fn response_frames_reach_the_client_in_order_with_backpressure() {
    // A channel-fed body: the test decides when each frame exists.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let app = Router::new().route(
        "/feed",
        get(move || {
            let rx = rx.clone();
            async move {
                let rx = rx.lock().await.take().expect("one request");
                let frames = stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
                });
                Body::from_stream(frames)
            }
        }),
    );
    let running = start(app).await;
    let res = send(
        running.local_addr(),
        get_request(running.local_addr(), "/feed"),
    )
    .await;
    let mut body = res.into_body();
    for word in ["one", "two", "three"] {
        tx.send(Bytes::from(word)).await.unwrap();
        let frame = tokio::time::timeout(HANG_GUARD, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), word);
    }
    drop(tx);
    assert!(tokio::time::timeout(HANG_GUARD, body.frame())
        .await
        .unwrap()
        .is_none());
    running.shutdown().await;
}

#[tokio::test]
async fn threads_serve_from_runtimes_of_their_own_and_drain_on_shutdown() {
    init_tracing();
    let slow = SlowRoute::default();
    let app = slow.add_to(Router::new().route(
        "/where",
        get(|| async { std::thread::current().name().unwrap_or("").to_owned() }),
    ));
    let options = ListenOptions::new().threads(2);
    let running = server::spawn_with("127.0.0.1:0", ServeTower::new(app), options)
        .await
        .expect("spawn with two threads");
    let addr = running.local_addr();

    // Concurrent connections, each answered on one of the server's own threads (this test's
    // runtime is a current-thread runtime on the test's thread).
    let answers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { http_get(addr, "/where").await }))
        .collect();
    for answer in answers {
        let (status, thread) = tokio::time::timeout(HANG_GUARD, answer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            thread == "pingora-tower-0" || thread == "pingora-tower-1",
            "answered on thread {thread:?}"
        );
    }
    slow.assert_drains(running).await;
}

#[tokio::test]
async fn zero_threads_are_refused_naming_the_value() {
    let options = ListenOptions::new().threads(0);
    let err = server::spawn_with("127.0.0.1:0", ServeTower::new(basic_app()), options)
        .await
        .expect_err("zero threads");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(err.to_string(), "threads must be > 0, got 0");
}

/// Writes a `POST /` head with `framing`, then the body in 64 KiB pieces (chunk-encoded when
/// `chunked`) until a write fails or `cap` bytes are out. Returns the body bytes written.
async fn upload_until_refused(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    chunked: bool,
    cap: usize,
) -> usize {
    use tokio::io::AsyncWriteExt;
    let head = if chunked {
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned()
    } else {
        format!(
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            2usize << 30
        )
    };
    if writer.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let piece = vec![b'u'; 64 * 1024];
    let mut written = 0;
    while written < cap {
        let result = if chunked {
            let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
            framed.extend_from_slice(&piece);
            framed.extend_from_slice(b"\r\n");
            writer.write_all(&framed).await
        } else {
            writer.write_all(&piece).await
        };
        if result.is_err() {
            break;
        }
        written += piece.len();
    }
    written
}

/// A `405` to a 2 GiB upload (announced by `Content-Length`, or chunked) must not read the
/// upload at the client's pace: the server answers, closes, and the client's writes fail
/// long before the end.
#[tokio::test]
async fn method_not_allowed_to_a_large_upload_closes_without_reading_it() {
    // Far more than the socket buffers on both sides hold, far less than the upload.
    const CAP: usize = 256 * MIB;
    let running = start(basic_app()).await;
    for chunked in [false, true] {
        let client = tokio::net::TcpStream::connect(running.local_addr())
            .await
            .expect("connect");
        let (mut reader, writer) = client.into_split();
        let upload = tokio::spawn(upload_until_refused(writer, chunked, CAP));
        let mut answer = Vec::new();
        let read = tokio::time::timeout(HANG_GUARD, async {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "chunked={chunked}: the connection stayed open"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            raw_status(&answer),
            Some(405),
            "chunked={chunked}: {answer:?}"
        );
        let written = tokio::time::timeout(HANG_GUARD, upload)
            .await
            .expect("the upload ends")
            .expect("upload task");
        assert!(
            written < CAP,
            "chunked={chunked}: the server read {written} bytes of an unwanted body"
        );
    }
    assert!(eventually_zero(|| running.active_connections()).await);
    running.shutdown().await;
}

/// A small unread body is drained, so the connection stays usable for the next request.
#[tokio::test]
async fn small_unread_body_is_drained_and_the_connection_reused() {
    use tokio::io::AsyncWriteExt;
    let running = start(basic_app()).await;
    let mut client = tokio::net::TcpStream::connect(running.local_addr())
        .await
        .expect("connect");
    let body = "b".repeat(10_000);
    let raw = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(raw.as_bytes()).await.expect("write");
    let answer = read_response(&mut client).await;
    assert_eq!(raw_status(&answer), Some(405), "{answer:?}");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let answer = read_response(&mut client).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer:?}");
    assert!(answer.ends_with("hello"), "{answer:?}");
    drop(client);
    running.shutdown().await;
}

/// RFC 9112 §6.2: a response never carries both `Content-Length` and `Transfer-Encoding`,
/// even when a service sets `Transfer-Encoding` on a body of known size. (axum's router sets
/// `Content-Length` itself, which hid this; a plain tower service does not.)
#[tokio::test]
async fn handler_transfer_encoding_on_a_known_size_body_gives_one_framing_header() {
    init_tracing();
    let svc = tower::service_fn(|_req: Request<pingora_tower::PingoraBody>| async {
        http::Response::builder()
            .header(http::header::TRANSFER_ENCODING, "chunked")
            .body(String::from("hello"))
    });
    let running = server::spawn("127.0.0.1:0", ServeTower::new(svc))
        .await
        .expect("spawn");
    let answer = raw_exchange(
        running.local_addr(),
        b"GET /te HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    let framing: Vec<&str> = head
        .lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
            name == "content-length" || name == "transfer-encoding"
        })
        .collect();
    assert_eq!(framing.len(), 1, "framing headers {framing:?} in {head:?}");
    assert!(
        framing[0]
            .to_ascii_lowercase()
            .starts_with("content-length: 5"),
        "{framing:?}"
    );
    assert_eq!(body, "hello");
    running.shutdown().await;
}
