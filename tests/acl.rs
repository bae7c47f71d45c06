//! The access list over real sockets, in the proxy and in an axum app on `ServeTower`: IPv4
//! and IPv6 networks, path spellings that must not get past a prefix rule, a spoofed
//! `X-Forwarded-For`, a dry run, connections closed at accept, and `SO_REUSEPORT` threads.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request as AxumRequest, State};
use axum::Router;
use middlewares::acl::{AclLayer, Action, Rule};
use pingora_tower::proxy::{PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower::server::{self, ListenOptions};
use pingora_tower::{RunningServer, ServeTower};
use pingora_tower_test_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::Layer;

/// An upstream counting its requests and answering `"up {path}"`.
struct Up {
    server: RunningServer,
    hits: Arc<AtomicUsize>,
}

impl Up {
    async fn start() -> Up {
        init_tracing();
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .fallback(
                |State(hits): State<Arc<AtomicUsize>>, req: AxumRequest| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    format!("up {}", req.uri().path())
                },
            )
            .with_state(hits.clone());
        let server = server::spawn("127.0.0.1:0", ServeTower::new(app))
            .await
            .expect("spawn upstream");
        Up { server, hits }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A proxy on `listen` with `acl` as a layer only (no accept-time filter).
async fn proxy_with_layer(listen: &str, up: &Up, acl: AclLayer) -> RunningProxy {
    PingoraProxy::builder(listen)
        .route(Route::prefix("/", Upstream::new(up.url())))
        .middleware(acl)
        .spawn()
        .await
        .expect("spawn proxy")
}

/// An axum app behind the ACL, on `ServeTower` (which hands the app the peer address).
async fn axum_with(acl: AclLayer, options: ListenOptions) -> RunningServer {
    init_tracing();
    let app = Router::new()
        .fallback(|req: AxumRequest| async move { format!("app {}", req.uri().path()) });
    server::spawn_with("127.0.0.1:0", ServeTower::new(acl.layer(app)), options)
        .await
        .expect("spawn app")
}

async fn status(addr: SocketAddr, raw_target: &str) -> Option<u16> {
    let raw = format!("GET {raw_target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    raw_status(&raw_exchange(addr, raw.as_bytes()).await)
}

#[tokio::test]
async fn ipv4_networks_allow_and_deny_in_rule_order() {
    let up = Up::start().await;
    // 127.0.0.1 is inside the denied /8 but the allow for it comes first.
    let first_allow = AclLayer::builder()
        .allow_ip("127.0.0.1")
        .deny_ip("127.0.0.0/8")
        .build()
        .unwrap();
    let proxy = proxy_with_layer("127.0.0.1:0", &up, first_allow).await;
    assert_eq!(status(proxy.local_addr(), "/").await, Some(200));
    proxy.shutdown().await;

    let denied = AclLayer::builder()
        .allow_ip("10.0.0.0/8")
        .deny_ip("127.0.0.0/8")
        .build()
        .unwrap();
    let proxy = proxy_with_layer("127.0.0.1:0", &up, denied.clone()).await;
    let raw = raw_exchange(
        proxy.local_addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), Some(403), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("content-length: 0"),
        "{raw}"
    );
    assert_eq!(denied.stats().denied, 1);
    proxy.shutdown().await;

    let other_network = AclLayer::builder().deny_ip("10.0.0.0/8").build().unwrap();
    let proxy = proxy_with_layer("127.0.0.1:0", &up, other_network).await;
    assert_eq!(status(proxy.local_addr(), "/").await, Some(200));
    proxy.shutdown().await;
    assert_eq!(
        up.hits(),
        2,
        "the denied request never reached the upstream"
    );
}

#[tokio::test]
async fn ipv6_networks_allow_and_deny() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: the CIDR unit tests cover IPv6");
        return;
    }
    let up = Up::start().await;
    let cases = [
        (AclLayer::builder().deny_ip("::1/128"), 403),
        (AclLayer::builder().deny_ip("2001:db8::/32"), 200),
        (
            AclLayer::builder()
                .allow_ip("::/64")
                .default_action(Action::Deny),
            200,
        ),
        (
            AclLayer::builder()
                .allow_ip("127.0.0.0/8")
                .default_action(Action::Deny),
            403,
        ),
    ];
    for (acl, want) in cases {
        let acl = acl.build().unwrap();
        let proxy = proxy_with_layer("[::1]:0", &up, acl.clone()).await;
        assert!(proxy.local_addr().is_ipv6());
        assert_eq!(status(proxy.local_addr(), "/").await, Some(want), "{acl:?}");
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_v4_client_on_a_dual_stack_socket_meets_v4_rules() {
    let up = Up::start().await;
    let acl = AclLayer::builder().deny_ip("127.0.0.0/8").build().unwrap();
    let Ok(proxy) = PingoraProxy::builder("[::]:0")
        .route(Route::prefix("/", Upstream::new(up.url())))
        .middleware(acl.clone())
        .spawn()
        .await
    else {
        eprintln!("no IPv6 wildcard socket here: the CIDR unit tests cover mapped addresses");
        return;
    };
    // Reached over IPv4, the peer reads `::ffff:127.0.0.1` on this socket.
    let v4 = SocketAddr::from(([127, 0, 0, 1], proxy.local_addr().port()));
    if TcpStream::connect(v4).await.is_err() {
        eprintln!("the IPv6 socket is IPv6-only here: the CIDR unit tests cover mapped addresses");
        proxy.shutdown().await;
        return;
    }
    assert_eq!(status(v4, "/").await, Some(403));
    assert_eq!(acl.stats().denied, 1);
    proxy.shutdown().await;
}

/// Spellings of `/admin` that a backend or the router reads as `/admin`.
const ADMIN_SPELLINGS: [&str; 7] = [
    "/admin",
    "/%61dmin",
    "/x/../admin",
    "//admin",
    "/./admin/users",
    "/x/%2e%2e/admin",
    "/%2E/admin",
];

#[tokio::test]
async fn path_spellings_cannot_bypass_a_denied_prefix_in_the_proxy() {
    let up = Up::start().await;
    let acl = AclLayer::builder()
        .rule(Rule::deny().path_prefix("/admin"))
        .build()
        .unwrap();
    let proxy = proxy_with_layer("127.0.0.1:0", &up, acl).await;
    let addr = proxy.local_addr();
    for target in ADMIN_SPELLINGS {
        assert_eq!(status(addr, target).await, Some(403), "{target}");
    }
    // Case rule: paths are case-sensitive, like the router; `/ADMIN` is another path.
    assert_eq!(status(addr, "/ADMIN").await, Some(200));
    assert_eq!(status(addr, "/administrator").await, Some(200));
    // No unambiguous reading: refused, not guessed.
    assert_eq!(status(addr, "/admin%2Fx").await, Some(400));
    assert_eq!(status(addr, "/public").await, Some(200));
    assert_eq!(up.hits(), 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn path_spellings_cannot_bypass_a_denied_prefix_in_an_axum_app() {
    let acl = AclLayer::builder()
        .rule(Rule::deny().path_prefix("/admin"))
        .build()
        .unwrap();
    let app = axum_with(acl, ListenOptions::new()).await;
    let addr = app.local_addr();
    for target in ADMIN_SPELLINGS {
        assert_eq!(status(addr, target).await, Some(403), "{target}");
    }
    assert_eq!(status(addr, "/ADMIN").await, Some(200));
    assert_eq!(status(addr, "/admin%2Fx").await, Some(400));
    let (code, body) = http_get(addr, "/public").await;
    assert_eq!((code.as_u16(), body.as_str()), (200, "app /public"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let up = Up::start().await;
    let allow_list = AclLayer::builder()
        .allow_ip("10.0.0.0/8")
        .default_action(Action::Deny)
        .trusted_proxies(["192.0.2.0/24"])
        .build()
        .unwrap();
    let proxy = proxy_with_layer("127.0.0.1:0", &up, allow_list).await;
    let raw =
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_status(&raw_exchange(proxy.local_addr(), raw).await),
        Some(403)
    );
    proxy.shutdown().await;

    // Behind a trusted proxy (the test client on 127.0.0.1), the header names the client.
    let behind = AclLayer::builder()
        .deny_ip("198.51.100.0/24")
        .trusted_proxies(["127.0.0.0/8"])
        .build()
        .unwrap();
    let proxy = proxy_with_layer("127.0.0.1:0", &up, behind).await;
    let xff = |list: &str| {
        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {list}\r\nConnection: close\r\n\r\n")
    };
    let addr = proxy.local_addr();
    let code = |list: &'static str| {
        let raw = xff(list);
        async move { raw_status(&raw_exchange(addr, raw.as_bytes()).await) }
    };
    assert_eq!(code("198.51.100.7").await, Some(403));
    assert_eq!(
        code("198.51.100.7, 127.0.0.5").await,
        Some(403),
        "trusted hop skipped"
    );
    assert_eq!(
        code("198.51.100.7, 203.0.113.1").await,
        Some(200),
        "client wrote the left part"
    );
    assert_eq!(code("203.0.113.1").await, Some(200));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_counts_and_serves() {
    let up = Up::start().await;
    let acl = AclLayer::builder()
        .deny_ip("127.0.0.0/8")
        .dry_run(true)
        .build()
        .unwrap();
    // `.acl(..)`: a dry run installs no accept-time filter either.
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix("/", Upstream::new(up.url())))
        .acl(acl.clone())
        .spawn()
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(status(proxy.local_addr(), "/").await, Some(200));
    }
    let stats = acl.stats();
    assert_eq!(
        (stats.dry_run_denied, stats.denied, stats.denied_at_accept),
        (3, 0, 0)
    );
    assert_eq!(up.hits(), 3);
    proxy.shutdown().await;
}

/// Connects to `addr`, writes `first` (may be empty), and asserts the server closes the
/// connection having written nothing.
async fn assert_closed_before_any_byte(addr: SocketAddr, first: &[u8]) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("the kernel accepts the connection");
    // The server may close before or while this is written: a failed write is fine.
    let _ = stream.write_all(first).await;
    let read = read_until_closed(&mut stream, HANG_GUARD)
        .await
        .expect("the server closed the connection");
    assert!(read.is_empty(), "the server wrote {read:?}");
}

/// The first bytes of a TLS 1.2+ ClientHello record (handshake, version 3.1, a length).
const CLIENT_HELLO_START: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
];

#[tokio::test]
async fn a_denied_network_is_closed_at_accept_in_the_proxy() {
    let up = Up::start().await;
    let acl = AclLayer::builder().deny_ip("127.0.0.0/8").build().unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix("/", Upstream::new(up.url())))
        .acl(acl.clone())
        .spawn()
        .await
        .unwrap();
    assert_closed_before_any_byte(proxy.local_addr(), b"").await;
    assert_closed_before_any_byte(proxy.local_addr(), CLIENT_HELLO_START).await;
    assert_closed_before_any_byte(proxy.local_addr(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let stats = acl.stats();
    assert_eq!((stats.denied_at_accept, stats.denied), (3, 0));
    assert_eq!(up.hits(), 0);
    assert_eq!(
        proxy.active_connections(),
        0,
        "no connection slot was taken"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn only_addresses_denied_outright_are_closed_at_accept() {
    let up = Up::start().await;
    // 127.0.0.1 may still ask for /health: its connections must be served.
    let acl = AclLayer::builder()
        .rule(Rule::allow().ip("127.0.0.0/8").path_prefix("/health"))
        .deny_ip("127.0.0.0/8")
        .build()
        .unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix("/", Upstream::new(up.url())))
        .acl(acl.clone())
        .spawn()
        .await
        .unwrap();
    assert_eq!(status(proxy.local_addr(), "/health").await, Some(200));
    assert_eq!(status(proxy.local_addr(), "/other").await, Some(403));
    assert_eq!(acl.stats().denied_at_accept, 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_denied_network_is_closed_at_accept_by_serve_tower() {
    let acl = AclLayer::builder()
        .allow_ip("10.0.0.0/8")
        .rule(Rule::deny())
        .build()
        .unwrap();
    let options = ListenOptions::new().accept_filter(server::AcceptFilter::acl(&acl));
    let app = axum_with(acl.clone(), options).await;
    assert_closed_before_any_byte(app.local_addr(), CLIENT_HELLO_START).await;
    assert_eq!(acl.stats().denied_at_accept, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn reuse_port_threads_each_accept_on_the_same_port() {
    init_tracing();
    let threads_seen = Arc::new(Mutex::new(HashSet::new()));
    let seen = threads_seen.clone();
    let app = Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            seen.lock().unwrap().insert(name);
            "ok"
        }
    });
    let options = ListenOptions::new().threads(4).reuse_port(true);
    let running = server::spawn_with("127.0.0.1:0", ServeTower::new(app), options)
        .await
        .unwrap();
    let addr = running.local_addr();
    // The kernel picks a socket by a hash of each connection's ports: with 4 sockets, 64
    // connections all landing on one thread has a probability of 4^-63.
    for _ in 0..64 {
        let (code, body) = http_get(addr, "/").await;
        assert_eq!((code.as_u16(), body.as_str()), (200, "ok"));
    }
    let seen = threads_seen.lock().unwrap().len();
    assert!(seen > 1, "every connection landed on one thread");
    running.shutdown().await;
}

#[tokio::test]
async fn a_proxy_on_reuse_port_threads_serves() {
    let up = Up::start().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .route(Route::prefix("/", Upstream::new(up.url())))
        .threads(2)
        .reuse_port(true)
        .spawn()
        .await
        .unwrap();
    for _ in 0..16 {
        let (code, body) = tokio::time::timeout(HANG_GUARD, http_get(proxy.local_addr(), "/x"))
            .await
            .expect("answered");
        assert_eq!((code.as_u16(), body.as_str()), (200, "up /x"));
    }
    tokio::time::timeout(Duration::from_secs(30), proxy.shutdown())
        .await
        .expect("shut down");
}
