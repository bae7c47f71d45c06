//! The proxy routes by one canonical host and path, forwards what it routed, and does not pass
//! on forwarding headers it cannot vouch for: real TCP on 127.0.0.1, raw request bytes (a
//! client library would clean some of these requests up itself), axum upstreams that echo what
//! they received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Request as AxumRequest, State};
use axum::Router;
use pingora_tower::proxy::{PingoraProxy, ProxyBuilder, Route, RunningProxy, Upstream};
use pingora_tower::{server, RunningServer, ServeTower};
use pingora_tower_test_support::*;

struct Echo {
    name: &'static str,
    hits: AtomicUsize,
}

/// An upstream answering `"{name} {path?query} host={Host}|fwd={Forwarded}|rip={X-Real-IP}|
/// xfh={X-Forwarded-Host}"`.
struct Up {
    server: RunningServer,
    state: Arc<Echo>,
}

impl Up {
    fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn echo(State(echo): State<Arc<Echo>>, req: AxumRequest) -> String {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(";")
    };
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    format!(
        "{} {target} host={}|fwd={}|rip={}|xfh={}",
        echo.name,
        header("host"),
        header("forwarded"),
        header("x-real-ip"),
        header("x-forwarded-host"),
    )
}

async fn upstream(name: &'static str) -> Up {
    init_tracing();
    let state = Arc::new(Echo {
        name,
        hits: AtomicUsize::new(0),
    });
    let app = Router::new().fallback(echo).with_state(state.clone());
    let server = server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .expect("spawn upstream");
    Up { server, state }
}

/// Four upstreams: `admin.example.com`, `*.example.com`, prefix `/api`, prefix `/admin` and
/// everything else (`root`).
struct Fixture {
    proxy: RunningProxy,
    host: Up,
    wild: Up,
    api: Up,
    admin: Up,
    root: Up,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(|b| b).await
    }

    async fn start_with(configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> Self {
        let (host, wild, api, admin, root) = (
            upstream("host").await,
            upstream("wild").await,
            upstream("api").await,
            upstream("admin").await,
            upstream("root").await,
        );
        let builder = PingoraProxy::builder("127.0.0.1:0").routes([
            Route::host("admin.example.com", Upstream::new(host.url())),
            Route::host("*.example.com", Upstream::new(wild.url())),
            Route::prefix("/api", Upstream::new(api.url())),
            Route::prefix("/admin", Upstream::new(admin.url())),
            Route::prefix("/", Upstream::new(root.url())),
        ]);
        let proxy = configure(builder)
            .build()
            .expect("valid config")
            .spawn()
            .await
            .expect("spawn proxy");
        Fixture {
            proxy,
            host,
            wild,
            api,
            admin,
            root,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.local_addr()
    }

    fn upstream_hits(&self) -> usize {
        [&self.host, &self.wild, &self.api, &self.admin, &self.root]
            .iter()
            .map(|u| u.hits())
            .sum()
    }

    /// The proxy still answers an ordinary request.
    async fn assert_still_serving(&self) {
        let (status, body) =
            exchange(self.addr(), "GET /ok HTTP/1.1\r\nHost: t.test\r\n\r\n").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "root /ok host=t.test|fwd=|rip=|xfh=t.test")
        );
    }

    async fn stop(self) {
        self.proxy.shutdown().await;
    }
}

/// Writes `raw` on a new connection; the status and the body of the answer.
async fn exchange(addr: SocketAddr, raw: &str) -> (u16, String) {
    let answer = raw_exchange(addr, raw.as_bytes()).await;
    let status = raw_status(&answer).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

fn get(target: &str, host: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

async fn assert_bad_request(f: &Fixture, raw: &str) {
    let before = f.upstream_hits();
    let (status, body) = exchange(f.addr(), raw).await;
    assert_eq!(status, 400, "{raw:?} answered {status} {body:?}");
    assert_eq!(f.upstream_hits(), before, "{raw:?} reached an upstream");
}

#[tokio::test]
async fn a_host_with_a_path_or_a_junk_port_is_refused() {
    let f = Fixture::start().await;
    for host in [
        "attacker.net/.example.com",
        "a.example.com:junk",
        "a.example.com:80:80",
        "a.example.com:0",
        "a b.example.com",
        "a\\b.example.com",
        "a%2eb.example.com",
        "a..example.com",
    ] {
        assert_bad_request(&f, &get("/", host)).await;
    }
    f.assert_still_serving().await;
    f.stop().await;
}

#[tokio::test]
async fn http11_without_a_host_is_refused_http10_routes_as_no_host() {
    let f = Fixture::start().await;
    assert_bad_request(&f, "GET /x HTTP/1.1\r\n\r\n").await;
    assert_bad_request(&f, "GET /x HTTP/1.1\r\nHost:\r\n\r\n").await;
    let (status, body) = exchange(f.addr(), "GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "root /x host=|fwd=|rip=|xfh=")
    );
    f.stop().await;
}

#[tokio::test]
async fn absolute_form_routes_by_its_own_authority() {
    let f = Fixture::start().await;
    for raw in [
        "GET http://admin.example.com/x?q=1 HTTP/1.1\r\n\r\n",
        "GET http://ADMIN.example.com./x?q=1 HTTP/1.1\r\n\r\n",
        "GET http://admin.example.com/x?q=1 HTTP/1.1\r\nHost: admin.example.com\r\n\r\n",
    ] {
        let (status, body) = exchange(f.addr(), raw).await;
        assert_eq!(
            (status, body.as_str()),
            (
                200,
                "host /x?q=1 host=admin.example.com|fwd=|rip=|xfh=admin.example.com"
            ),
            "{raw:?}"
        );
    }
    let (status, body) = exchange(f.addr(), "GET http://w.example.com:8080 HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "wild / host=w.example.com:8080|fwd=|rip=|xfh=w.example.com:8080"
        )
    );
    assert_bad_request(&f, "GET http://a.example.com:junk/ HTTP/1.1\r\n\r\n").await;
    f.stop().await;
}

#[tokio::test]
async fn dot_segments_route_and_reach_the_upstream_as_the_resolved_path() {
    let f = Fixture::start().await;
    for target in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E./admin",
        "/api/./../admin",
        "/../admin",
    ] {
        let (status, body) = exchange(f.addr(), &get(target, "t.test")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "admin /admin host=t.test|fwd=|rip=|xfh=t.test"),
            "{target}"
        );
    }
    assert_eq!(f.api.hits(), 0, "nothing went to the /api upstream");
    let (status, body) = exchange(f.addr(), &get("/admin/x/..?q=%2e%2E", "t.test")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "admin /admin/?q=%2e%2E host=t.test|fwd=|rip=|xfh=t.test"
        ),
        "the query string is kept as sent"
    );
    f.stop().await;
}

#[tokio::test]
async fn encoded_separators_and_backslashes_are_refused() {
    let f = Fixture::start().await;
    for target in [
        "/api/a%2Fb",
        "/api%2f..%2fadmin",
        "/api/a%5Cb",
        "/api/a%00",
        "/api\\..\\admin",
        "/api/%zz",
        "/api/%4",
    ] {
        assert_bad_request(&f, &get(target, "t.test")).await;
    }
    f.assert_still_serving().await;
    f.stop().await;
}

#[tokio::test]
async fn unreserved_escapes_are_decoded_others_upper_cased() {
    let f = Fixture::start().await;
    let (status, body) = exchange(f.addr(), &get("/%61pi/%41%7e/%3f?q=%61", "t.test")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "api /api/A~/%3F?q=%61 host=t.test|fwd=|rip=|xfh=t.test"
        )
    );
    // Prefixes are case-sensitive: `/API` is not `/api`.
    let (_, body) = exchange(f.addr(), &get("/%41PI/x", "t.test")).await;
    assert!(body.starts_with("root /API/x "), "{body}");
    f.stop().await;
}

#[tokio::test]
async fn mixed_case_and_trailing_dot_hosts_match_and_are_forwarded_canonical() {
    let f = Fixture::start().await;
    for (host, expected) in [
        (
            "ADMIN.Example.COM",
            "host /x host=admin.example.com|fwd=|rip=|xfh=admin.example.com",
        ),
        (
            "admin.example.com.",
            "host /x host=admin.example.com|fwd=|rip=|xfh=admin.example.com",
        ),
        (
            "Admin.Example.Com.:8443",
            "host /x host=admin.example.com:8443|fwd=|rip=|xfh=admin.example.com:8443",
        ),
        (
            "W.EXAMPLE.COM.",
            "wild /x host=w.example.com|fwd=|rip=|xfh=w.example.com",
        ),
    ] {
        let (status, body) = exchange(f.addr(), &get("/x", host)).await;
        assert_eq!((status, body.as_str()), (200, expected), "{host}");
    }
    f.stop().await;
}

#[tokio::test]
async fn client_sent_forwarded_and_x_real_ip_do_not_reach_the_upstream() {
    let raw = "GET /x HTTP/1.1\r\nHost: t.test\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
               forwarded: for=7.7.7.7\r\n\r\n";
    let f = Fixture::start().await;
    let (status, body) = exchange(f.addr(), raw).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "root /x host=t.test|fwd=|rip=|xfh=t.test")
    );
    f.stop().await;

    let f = Fixture::start_with(|b| b.keep_client_forwarded(true)).await;
    let (status, body) = exchange(f.addr(), raw).await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "root /x host=t.test|fwd=for=6.6.6.6;for=7.7.7.7|rip=6.6.6.6|xfh=t.test"
        ),
        "kept on request"
    );
    f.stop().await;
}

#[tokio::test]
async fn merge_slashes_is_off_by_default_and_a_switch() {
    let f = Fixture::start().await;
    let (_, body) = exchange(f.addr(), &get("//api//x", "t.test")).await;
    assert!(body.starts_with("root //api//x "), "{body}");
    f.stop().await;

    let f = Fixture::start_with(|b| b.merge_slashes(true)).await;
    let (status, body) = exchange(f.addr(), &get("//api//x//?a=//", "t.test")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "api /api/x/?a=// host=t.test|fwd=|rip=|xfh=t.test")
    );
    f.stop().await;
}

#[test]
fn a_prefix_that_is_not_canonical_is_a_configuration_error() {
    for prefix in ["/api/../admin", "/a%2fb", "/%61pi", "/a%3fb"] {
        let err = PingoraProxy::builder("127.0.0.1:0")
            .route(Route::prefix(prefix, "http://127.0.0.1:1"))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{prefix:?}")), "{prefix}: {err}");
    }
}
