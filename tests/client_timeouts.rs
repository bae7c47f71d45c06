//! Client timeouts and the connection cap, on both hosts (`ServeTower` served by the harness,
//! and the proxy in front of a `ServeTower` upstream), with raw TCP clients on 127.0.0.1.
//!
//! Limits are set to a couple of hundred milliseconds; each wait for a close is bounded by
//! [`CLOSED_WITHIN`], far below Pingora's own 60 s per-read timeout, so a host that does not
//! enforce a limit fails the test instead of passing late.

use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::stream;
use pingora_tower::proxy::{PingoraProxy, ProxyConfigError, Route, RunningProxy, Upstream};
use pingora_tower::server::{self, ClientLimits};
use pingora_tower::RunningServer;
use pingora_tower::ServeTower;
use pingora_tower_test_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The limit under test.
const SHORT: Duration = Duration::from_millis(200);
/// Every other limit: long enough never to interfere.
const LONG: Duration = Duration::from_secs(30);
/// How long a test waits for the server to close a connection it should close.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);
/// Size of the `/big` response: far more than the socket buffers hold.
const BIG: usize = 256 * 1024 * 1024;

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/big",
            get(|| async {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let chunks = stream::iter(
                    (0..BIG / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                Body::from_stream(chunks)
            }),
        )
}

/// Which limit a test shortens; the others stay [`LONG`].
#[derive(Clone, Copy)]
enum Short {
    Header,
    Keepalive,
    Body,
    Send,
    None,
}

impl Short {
    /// [`SHORT`] for the limit `self` names, [`LONG`] for any other.
    fn pick(self, limit: Short) -> Duration {
        if std::mem::discriminant(&self) == std::mem::discriminant(&limit) {
            SHORT
        } else {
            LONG
        }
    }
}

fn limits(short: Short, max_connections: usize) -> ClientLimits {
    ClientLimits::new()
        .header_timeout(short.pick(Short::Header))
        .keepalive_timeout(short.pick(Short::Keepalive))
        .body_timeout(short.pick(Short::Body))
        .send_timeout(short.pick(Short::Send))
        .max_connections(max_connections)
}

/// A server under test: `ServeTower` itself, or the proxy in front of one.
enum Host {
    Serve(RunningServer),
    Proxy {
        proxy: RunningProxy,
        upstream: RunningServer,
    },
}

impl Host {
    async fn serve(short: Short, max_connections: usize) -> Host {
        init_tracing();
        let running = server::spawn_with(
            "127.0.0.1:0",
            ServeTower::new(app()),
            limits(short, max_connections),
        )
        .await
        .expect("spawn");
        Host::Serve(running)
    }

    async fn proxy(short: Short, max_connections: usize) -> Host {
        init_tracing();
        let upstream = server::spawn("127.0.0.1:0", ServeTower::new(app()))
            .await
            .expect("spawn upstream");
        let proxy = PingoraProxy::builder("127.0.0.1:0")
            .route(Route::prefix(
                "/",
                Upstream::new(format!("http://{}", upstream.local_addr())),
            ))
            .header_timeout(short.pick(Short::Header))
            .keepalive_timeout(short.pick(Short::Keepalive))
            .body_timeout(short.pick(Short::Body))
            .send_timeout(short.pick(Short::Send))
            .max_connections(max_connections)
            .spawn()
            .await
            .expect("spawn proxy");
        Host::Proxy { proxy, upstream }
    }

    /// Both hosts with this limit shortened.
    async fn both(short: Short, max_connections: usize) -> [Host; 2] {
        [
            Host::serve(short, max_connections).await,
            Host::proxy(short, max_connections).await,
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Host::Serve(_) => "ServeTower",
            Host::Proxy { .. } => "proxy",
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Host::Serve(s) => s.local_addr(),
            Host::Proxy { proxy, .. } => proxy.local_addr(),
        }
    }

    fn active(&self) -> usize {
        match self {
            Host::Serve(s) => s.active_connections(),
            Host::Proxy { proxy, .. } => proxy.active_connections(),
        }
    }

    /// Asserts every client connection is gone, then stops the host.
    async fn assert_idle_and_stop(self) {
        let name = self.name();
        assert!(
            eventually_zero(|| self.active()).await,
            "{name}: {} connections still counted",
            self.active()
        );
        match self {
            Host::Serve(s) => s.shutdown().await,
            Host::Proxy { proxy, upstream } => {
                proxy.shutdown().await;
                upstream.shutdown().await;
            }
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    for host in Host::both(Short::Keepalive, 100).await {
        let name = host.name();
        let mut client = TcpStream::connect(host.addr()).await.expect("connect");
        for _ in 0..2 {
            client.write_all(GET).await.expect("write");
            let answer = read_response(&mut client).await;
            assert_eq!(raw_status(&answer), Some(200), "{name}: {answer:?}");
        }
        let rest = read_until_closed(&mut client, CLOSED_WITHIN).await;
        assert_eq!(
            rest.as_deref(),
            Some(&b""[..]),
            "{name}: the idle keep-alive connection should close quietly"
        );
        drop(client);
        host.assert_idle_and_stop().await;
    }
}

#[tokio::test]
async fn dribbled_head_gets_408_after_header_timeout() {
    for host in Host::both(Short::Header, 100).await {
        let name = host.name();
        let client = TcpStream::connect(host.addr()).await.expect("connect");
        let (mut reader, mut writer) = client.into_split();
        // One byte every 20 ms: each read is quick, the head never completes.
        let dribble = tokio::spawn(async move {
            let head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ";
            for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if writer.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut out = Vec::new();
        let read = tokio::time::timeout(CLOSED_WITHIN, async {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        dribble.abort();
        assert!(
            read.is_ok(),
            "{name}: a dribbled head kept the connection open"
        );
        let answer = String::from_utf8_lossy(&out);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{name}: expected 408, got {answer:?}"
        );
        host.assert_idle_and_stop().await;
    }
}

#[tokio::test]
async fn silent_connection_is_closed_quietly_after_header_timeout() {
    for host in Host::both(Short::Header, 100).await {
        let name = host.name();
        let mut client = TcpStream::connect(host.addr()).await.expect("connect");
        let rest = read_until_closed(&mut client, CLOSED_WITHIN).await;
        assert_eq!(
            rest.as_deref(),
            Some(&b""[..]),
            "{name}: a connection that sent nothing should close without a response"
        );
        drop(client);
        host.assert_idle_and_stop().await;
    }
}

#[tokio::test]
async fn stalled_request_body_is_cut_after_body_timeout() {
    for host in Host::both(Short::Body, 100).await {
        let name = host.name();
        let mut client = TcpStream::connect(host.addr()).await.expect("connect");
        client
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789",
            )
            .await
            .expect("write");
        let answer = read_until_closed(&mut client, CLOSED_WITHIN)
            .await
            .unwrap_or_else(|| panic!("{name}: a stalled body kept the connection open"));
        let answer = String::from_utf8_lossy(&answer);
        assert_ne!(raw_status(&answer), Some(200), "{name}: {answer:?}");
        drop(client);
        host.assert_idle_and_stop().await;
    }
}

#[tokio::test]
async fn client_that_stops_reading_is_cut_after_send_timeout() {
    for host in Host::both(Short::Send, 100).await {
        let name = host.name();
        let mut client = TcpStream::connect(host.addr()).await.expect("connect");
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        // The response has begun (so the connection is counted); from here the client reads
        // nothing and the server's writes stall once the socket buffers fill.
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(CLOSED_WITHIN, client.read(&mut buf))
                .await
                .expect("response head in time")
                .expect("read");
            assert!(n > 0, "{name}: closed before the response head");
            head.extend_from_slice(&buf[..n]);
        }
        assert_eq!(raw_status(&String::from_utf8_lossy(&head)), Some(200));
        assert!(
            eventually_zero(|| host.active()).await,
            "{name}: a client that stopped reading kept its connection"
        );
        let got = read_until_closed(&mut client, CLOSED_WITHIN)
            .await
            .unwrap_or_else(|| panic!("{name}: the connection is still open"));
        assert!(got.len() < BIG, "{name}: the whole response went out");
        drop(client);
        host.assert_idle_and_stop().await;
    }
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_until_one_ends() {
    for host in Host::both(Short::None, 2).await {
        let name = host.name();
        let mut first = TcpStream::connect(host.addr()).await.expect("connect");
        let mut second = TcpStream::connect(host.addr()).await.expect("connect");
        for client in [&mut first, &mut second] {
            client.write_all(GET).await.expect("write");
            let answer = read_response(client).await;
            assert_eq!(raw_status(&answer), Some(200), "{name}: {answer:?}");
        }
        let mut third = TcpStream::connect(host.addr()).await.expect("connect");
        let _ = third.write_all(GET).await;
        let refused = read_until_closed(&mut third, CLOSED_WITHIN)
            .await
            .unwrap_or_else(|| panic!("{name}: the connection over the cap was kept open"));
        assert!(
            refused.is_empty(),
            "{name}: the connection over the cap was served: {:?}",
            String::from_utf8_lossy(&refused)
        );

        drop(first);
        let one_left = async {
            while host.active() != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(CLOSED_WITHIN, one_left)
            .await
            .unwrap_or_else(|_| panic!("{name}: the closed connection is still counted"));
        let mut fourth = TcpStream::connect(host.addr()).await.expect("connect");
        fourth.write_all(GET).await.expect("write");
        let answer = read_response(&mut fourth).await;
        assert_eq!(raw_status(&answer), Some(200), "{name}: {answer:?}");

        drop((second, third, fourth));
        host.assert_idle_and_stop().await;
    }
}

#[tokio::test]
async fn zero_limits_are_config_errors_naming_field_and_value() {
    let err = server::spawn_with(
        "127.0.0.1:0",
        ServeTower::new(app()),
        ClientLimits::new().header_timeout(Duration::ZERO),
    )
    .await
    .expect_err("zero header timeout");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(
        err.to_string(),
        "header_timeout must be greater than 0, got 0ns"
    );

    let route = || Route::prefix("/", Upstream::new("http://127.0.0.1:9"));
    let err = PingoraProxy::builder("127.0.0.1:0")
        .route(route())
        .max_connections(0)
        .build()
        .expect_err("zero connections");
    assert_eq!(
        err,
        ProxyConfigError::InvalidClientLimit {
            field: "max_connections",
            value: "0".to_owned()
        }
    );
    let err = PingoraProxy::builder("127.0.0.1:0")
        .route(route())
        .send_timeout(Duration::ZERO)
        .build()
        .expect_err("zero send timeout");
    assert_eq!(
        err.to_string(),
        "client limits: send_timeout must be greater than 0, got 0ns"
    );
}
