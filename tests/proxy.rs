//! The Pingora reverse proxy end to end: real TCP on 127.0.0.1, upstreams are axum apps on
//! `ServeTower`, each able to be slow, fail, hang or refuse.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Request as AxumRequest, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{Request, Version};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result as PResult};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use pingora_tower::proxy::{
    HashKey, HealthCheck, PingoraProxy, ProxyBuilder, Route, RunningProxy, Upstream,
};
use pingora_tower::{server, RunningServer, ServeTower};
use pingora_tower_test_support::*;
use tokio::sync::{oneshot, Notify};
use tower_layer::Layer;

const MIB: usize = 1024 * 1024;

/// One upstream: counts the requests it answers and can be told to fail its health check or
/// to hold a request until released.
struct Backend {
    name: String,
    hits: AtomicUsize,
    health: AtomicU16,
    entered: Notify,
    release: Notify,
    answered: AtomicBool,
    first_chunk: Mutex<Option<oneshot::Sender<()>>>,
}

impl Backend {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

struct Up {
    server: RunningServer,
    state: Arc<Backend>,
    url: String,
}

impl Up {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

async fn hit(State(b): State<Arc<Backend>>, req: AxumRequest) -> String {
    b.hits.fetch_add(1, Ordering::SeqCst);
    format!("{} {}", b.name, req.uri().path())
}

async fn health(State(b): State<Arc<Backend>>) -> StatusCode {
    StatusCode::from_u16(b.health.load(Ordering::SeqCst)).unwrap()
}

async fn headers(headers: HeaderMap) -> String {
    let h = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(";")
    };
    format!(
        "{}|{}|{}|{}",
        h("x-forwarded-for"),
        h("x-forwarded-proto"),
        h("x-forwarded-host"),
        h("host")
    )
}

async fn hang(State(b): State<Arc<Backend>>) -> &'static str {
    b.entered.notify_one();
    b.release.notified().await;
    b.answered.store(true, Ordering::SeqCst);
    "late"
}

async fn upload(State(b): State<Arc<Backend>>, body: Body) -> String {
    let mut body = body.into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        total += chunk.expect("chunk").len();
        if let Some(tx) = b.first_chunk.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
    total.to_string()
}

async fn upstream(name: &str) -> Up {
    init_tracing();
    let state = Arc::new(Backend {
        name: name.to_owned(),
        hits: AtomicUsize::new(0),
        health: AtomicU16::new(200),
        entered: Notify::new(),
        release: Notify::new(),
        answered: AtomicBool::new(false),
        first_chunk: Mutex::new(None),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/headers", get(headers))
        .route("/hang", get(hang))
        .route("/upload", post(upload))
        .fallback(hit)
        .with_state(state.clone());
    let server = server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .expect("spawn upstream");
    let url = format!("http://{}", server.local_addr());
    Up { server, state, url }
}

async fn spawn<L>(builder: ProxyBuilder<L>) -> RunningProxy
where
    L: Layer<pingora_tower::proxy::BaseProxy>,
    L::Service: ProxyHttp + Send + Sync + 'static,
    <L::Service as ProxyHttp>::CTX: Send + Sync,
{
    init_tracing();
    builder
        .build()
        .expect("valid config")
        .spawn()
        .await
        .expect("spawn proxy")
}

fn proxy() -> ProxyBuilder {
    PingoraProxy::builder("127.0.0.1:0")
}

#[tokio::test]
async fn prefix_routing_longest_prefix_wins_on_segment_boundaries() {
    let (root, api, v2) = (
        upstream("root").await,
        upstream("api").await,
        upstream("v2").await,
    );
    let running = spawn(proxy().routes([
        Route::prefix("/", Upstream::new(&root.url)),
        Route::prefix("/api", Upstream::new(&api.url)),
        Route::prefix("/api/v2/", Upstream::new(&v2.url)),
    ]))
    .await;
    let addr = running.local_addr();
    for (path, expected) in [
        ("/", "root /"),
        ("/other", "root /other"),
        ("/api", "api /api"),
        ("/api/users?x=1", "api /api/users"),
        ("/apix", "root /apix"),
        ("/api/v2", "v2 /api/v2"),
        ("/api/v2/items", "v2 /api/v2/items"),
        ("/api/v20", "api /api/v20"),
    ] {
        assert_eq!(
            http_get(addr, path).await,
            (StatusCode::OK, expected.to_owned()),
            "{path}"
        );
    }
    running.shutdown().await;
}

#[tokio::test]
async fn host_routing_exact_wildcard_and_host_with_prefix() {
    let (exact, wild, v2, any) = (
        upstream("exact").await,
        upstream("wild").await,
        upstream("v2").await,
        upstream("any").await,
    );
    let running = spawn(proxy().routes([
        Route::host("api.example.com", Upstream::new(&exact.url)),
        Route::host("*.example.com", Upstream::new(&wild.url)),
        Route::host("api.example.com", Upstream::new(&v2.url)).with_prefix("/v2"),
        Route::prefix("/", Upstream::new(&any.url)),
    ]))
    .await;
    let addr = running.local_addr();
    for (host, path, expected) in [
        ("api.example.com", "/x", "exact /x"),
        ("API.Example.COM:8443", "/x", "exact /x"),
        ("api.example.com", "/v2/x", "v2 /v2/x"),
        ("www.example.com", "/v2/x", "wild /v2/x"),
        ("a.b.example.com", "/", "wild /"),
        ("example.com", "/", "any /"),
        ("other.test", "/y", "any /y"),
    ] {
        assert_eq!(
            get_with_host(addr, host, path).await,
            (StatusCode::OK, expected.to_owned()),
            "{host}{path}"
        );
    }
    running.shutdown().await;
}

#[tokio::test]
async fn no_matching_route_is_a_404_from_the_proxy() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let running = spawn(proxy().routes([
        Route::host("a.test", Upstream::new(&a.url)),
        Route::prefix("/b", Upstream::new(&b.url)).with_host("b.test"),
    ]))
    .await;
    let addr = running.local_addr();
    assert_eq!(
        get_with_host(addr, "c.test", "/").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_with_host(addr, "b.test", "/a").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_with_host(addr, "b.test", "/bx").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        (a.state.hits(), b.state.hits()),
        (0, 0),
        "no upstream saw the requests"
    );
    assert_eq!(
        get_with_host(addr, "b.test", "/b/1").await.0,
        StatusCode::OK
    );
    running.shutdown().await;
}

#[tokio::test]
async fn h2c_clients_are_routed_by_uri_authority() {
    let (api, any) = (upstream("api").await, upstream("any").await);
    let running = spawn(
        proxy()
            .routes([
                Route::host("api.example.com", Upstream::new(&api.url)),
                Route::prefix("/", Upstream::new(&any.url)),
            ])
            .h2c(true),
    )
    .await;
    let mut conn = h2c_connection(running.local_addr()).await;
    let req = Request::get("http://api.example.com/headers")
        .version(Version::HTTP_2)
        .body(empty())
        .unwrap();
    let res = conn.send_request(req).await.expect("h2 request");
    assert_eq!(res.status(), StatusCode::OK);
    let echoed = body_text(res).await;
    assert!(
        echoed.ends_with("|api.example.com|api.example.com"),
        "{echoed}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn weights_three_to_one_split_traffic_75_25() {
    let (heavy, light) = (upstream("heavy").await, upstream("light").await);
    let running = spawn(proxy().routes([Route::prefix(
        "/",
        Upstream::weighted([(&heavy.url, 3), (&light.url, 1)]),
    )]))
    .await;
    let addr = running.local_addr();
    let mut conn = h1_connection(addr).await;
    for _ in 0..400 {
        conn.ready().await.unwrap();
        let res = conn.send_request(get_request(addr, "/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        body_text(res).await;
    }
    let heavy_hits = heavy.state.hits();
    assert_eq!(heavy_hits + light.state.hits(), 400);
    assert!(
        (280..=320).contains(&heavy_hits),
        "heavy got {heavy_hits}/400"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_backend() {
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let running = spawn(
        proxy().routes([Route::prefix(
            "/",
            Upstream::weighted(ups.iter().map(|u| (u.url.as_str(), 1)))
                .hashing(HashKey::Header("x-user".to_owned())),
        )]),
    )
    .await;
    let addr = running.local_addr();
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let mut answers = Vec::new();
        for _ in 0..3 {
            let req = Request::get("/")
                .header("host", "t")
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap();
            answers.push(body_text(send(addr, req).await).await);
        }
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "user-{user}: {answers:?}"
        );
        seen.insert(answers.remove(0));
    }
    assert!(seen.len() >= 2, "30 keys all landed on {seen:?}");
    running.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_retried_on_another_backend() {
    let good = upstream("good").await;
    let refusing = format!("http://{}", refusing_addr());
    let running = spawn(proxy().routes([Route::prefix(
        "/",
        Upstream::weighted([(refusing.as_str(), 1), (good.url.as_str(), 1)]),
    )]))
    .await;
    for _ in 0..10 {
        assert_eq!(
            http_get(running.local_addr(), "/").await,
            (StatusCode::OK, "good /".to_owned())
        );
    }
    assert_eq!(good.state.hits(), 10);
    running.shutdown().await;
}

#[tokio::test]
async fn every_backend_refusing_gives_502() {
    let urls = [refusing_addr(), refusing_addr()].map(|a| format!("http://{a}"));
    let running = spawn(proxy().routes([Route::prefix(
        "/",
        Upstream::weighted(urls.iter().map(|u| (u, 1))),
    )]))
    .await;
    let (status, body) = tokio::time::timeout(HANG_GUARD, http_get(running.local_addr(), "/"))
        .await
        .expect("a prompt answer");
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    running.shutdown().await;
}

/// Polls the proxy's view of `addr` until it is `healthy`, a bounded number of times.
async fn wait_health(running: &RunningProxy, addr: SocketAddr, healthy: bool) {
    for _ in 0..400 {
        let status = running
            .backends()
            .into_iter()
            .find(|b| b.addr == addr)
            .unwrap();
        if status.healthy == healthy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} never became healthy={healthy}");
}

#[tokio::test]
async fn unhealthy_backend_gets_no_traffic_until_it_recovers() {
    let (flaky, steady) = (upstream("flaky").await, upstream("steady").await);
    let check = HealthCheck::http("/health")
        .interval(Duration::from_millis(100))
        .healthy_after(1)
        .unhealthy_after(1);
    let running = spawn(proxy().routes([Route::prefix(
        "/",
        Upstream::weighted([(&flaky.url, 1), (&steady.url, 1)]).health_check(check),
    )]))
    .await;
    let addr = running.local_addr();

    flaky.state.health.store(500, Ordering::SeqCst);
    wait_health(&running, flaky.addr(), false).await;
    for _ in 0..20 {
        assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    }
    assert_eq!((flaky.state.hits(), steady.state.hits()), (0, 20));

    flaky.state.health.store(200, Ordering::SeqCst);
    wait_health(&running, flaky.addr(), true).await;
    for _ in 0..20 {
        assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    }
    let back = flaky.state.hits();
    assert!((5..=15).contains(&back), "recovered backend got {back}/20");
    running.shutdown().await;
}

#[tokio::test]
async fn request_deadline_answers_504_before_the_upstream_does() {
    let slow = upstream("slow").await;
    let running = spawn(
        proxy()
            .routes([Route::prefix("/", Upstream::new(&slow.url))])
            .with_timeouts(1_000, 300),
    )
    .await;
    let addr = running.local_addr();
    let (status, _) = tokio::time::timeout(HANG_GUARD, http_get(addr, "/hang"))
        .await
        .expect("the proxy answered");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        !slow.state.answered.load(Ordering::SeqCst),
        "the upstream answered before the deadline"
    );
    slow.state.release.notify_one();
    // The proxy keeps serving after a deadline.
    assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    running.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_reach_the_upstream() {
    let up = upstream("echo").await;
    let running = spawn(proxy().routes([Route::prefix("/", Upstream::new(&up.url))])).await;
    let req = Request::get("/headers")
        .header("host", "front.test:8080")
        .header("x-forwarded-for", "10.0.0.1")
        .body(empty())
        .unwrap();
    let res = send(running.local_addr(), req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        body_text(res).await,
        "10.0.0.1, 127.0.0.1|http|front.test:8080|front.test:8080"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn proxy_on_threads_of_its_own_forwards_every_request() {
    let up = upstream("threaded").await;
    let running = spawn(
        proxy()
            .routes([Route::prefix("/", Upstream::new(&up.url))])
            .middleware(TagLayer("tagged"))
            .threads(2),
    )
    .await;
    let addr = running.local_addr();
    let answers: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move { send(addr, get_request(addr, &format!("/n/{i}"))).await })
        })
        .collect();
    for answer in answers {
        let res = answer.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        // This test's runtime runs on the test's thread: the proxy ran on its own threads.
        let thread = res.headers()["x-thread"].to_str().unwrap().to_owned();
        assert!(thread.starts_with("pingora-tower-"), "ran on {thread:?}");
        let body = body_text(res).await;
        assert!(body.starts_with("threaded /n/"), "{body}");
    }
    assert_eq!(up.state.hits(), 20);
    running.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_can_be_turned_off() {
    let up = upstream("echo").await;
    let running = spawn(
        proxy()
            .routes([Route::prefix("/", Upstream::new(&up.url))])
            .forwarded_headers(false),
    )
    .await;
    let (status, echoed) = get_with_host(running.local_addr(), "front.test", "/headers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed, "|||front.test", "only the client's Host passes");
    running.shutdown().await;
}

#[tokio::test]
async fn upstream_host_header_when_not_preserving_host() {
    let up = upstream("echo").await;
    let running = spawn(proxy().routes([Route::prefix(
        "/",
        Upstream::new(&up.url).preserve_host(false),
    )]))
    .await;
    let (_, echoed) = get_with_host(running.local_addr(), "front.test", "/headers").await;
    assert_eq!(echoed, format!("127.0.0.1|http|front.test|{}", up.addr()));
    running.shutdown().await;
}

/// The upstream reports the first chunk it sees; the client sends the other 15 MiB only after
/// that, so a proxy that buffered the request body would never get there.
#[tokio::test]
async fn sixteen_mib_upload_streams_through_the_proxy() {
    let up = upstream("sink").await;
    let (first_tx, first_rx) = oneshot::channel();
    *up.state.first_chunk.lock().unwrap() = Some(first_tx);
    let running = spawn(proxy().routes([Route::prefix("/", Upstream::new(&up.url))])).await;

    let (status, body) = upload_streaming(running.local_addr(), "/upload", 16, first_rx).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, (16 * MIB).to_string());
    running.shutdown().await;
}

#[test]
fn bad_configurations_are_rejected_naming_the_value() {
    let err = |route: Route| proxy().route(route).build().unwrap_err().to_string();
    let threads = proxy()
        .route(Route::prefix("/", Upstream::new("http://127.0.0.1:9")))
        .threads(0)
        .build()
        .unwrap_err()
        .to_string();
    assert_eq!(threads, "threads must be greater than 0, got 0");
    let reuse_port = proxy()
        .route(Route::prefix("/", Upstream::new("http://127.0.0.1:9")))
        .reuse_port(true)
        .build()
        .unwrap_err()
        .to_string();
    assert_eq!(
        reuse_port,
        "reuse_port(true) needs threads(n): one SO_REUSEPORT socket per thread, and no thread was set"
    );
    assert_eq!(
        err(Route::prefix("/", Upstream::new("htp://x"))),
        r#"upstream "htp://x": unsupported scheme "htp""#
    );
    let bad_url = err(Route::prefix("/", Upstream::new("http//missing-colon")));
    assert!(bad_url.contains(r#""http//missing-colon""#), "{bad_url}");
    let zero = err(Route::prefix(
        "/",
        Upstream::weighted([("http://127.0.0.1:9", 0)]),
    ));
    assert!(
        zero.contains(r#""http://127.0.0.1:9""#) && zero.contains("weight 0"),
        "{zero}"
    );
    let empty = err(Route::prefix(
        "/api",
        Upstream::weighted(Vec::<(&str, u32)>::new()),
    ));
    assert_eq!(empty, r#"route prefix "/api": upstream list is empty"#);
    let prefix = err(Route::prefix("api", Upstream::new("http://127.0.0.1:9")));
    assert!(prefix.contains(r#""api""#), "{prefix}");
    let check = err(Route::prefix(
        "/",
        Upstream::new("http://127.0.0.1:9").health_check(HealthCheck::tcp().healthy_after(0)),
    ));
    assert!(check.contains("healthy_after"), "{check}");
    let timeouts =
        PingoraProxy::with_routes("127.0.0.1:0", [Route::prefix("/", "http://127.0.0.1:9")])
            .with_timeouts(0, 1_000)
            .build()
            .unwrap_err();
    assert!(timeouts.to_string().contains("connect_ms"), "{timeouts}");
}

/// Adds `x-layer: <name>` to responses, before the inner layers do, and `x-thread`: the name of
/// the thread the proxy ran the response phase on.
#[derive(Clone)]
struct TagLayer(&'static str);

struct Tag<S> {
    inner: S,
    name: &'static str,
}

impl<S> Layer<S> for TagLayer {
    type Service = Tag<S>;

    fn layer(&self, inner: S) -> Tag<S> {
        Tag {
            inner,
            name: self.0,
        }
    }
}

// Forwards only the phases the base proxy and this test use. A real layer must forward EVERY
// `ProxyHttp` method: one left out falls back to Pingora's default and silently skips the
// inner proxy's logic for that phase.
#[async_trait]
impl<S> ProxyHttp for Tag<S>
where
    S: ProxyHttp + Send + Sync,
    S::CTX: Send + Sync,
{
    type CTX = S::CTX;

    fn new_ctx(&self) -> S::CTX {
        self.inner.new_ctx()
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut S::CTX) -> PResult<()> {
        self.inner.early_request_filter(session, ctx).await
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut S::CTX) -> PResult<bool> {
        self.inner.request_filter(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut S::CTX,
    ) -> PResult<()> {
        self.inner
            .request_body_filter(session, body, end_of_stream, ctx)
            .await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut S::CTX,
    ) -> PResult<Box<HttpPeer>> {
        self.inner.upstream_peer(session, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut S::CTX,
    ) -> PResult<()> {
        self.inner
            .upstream_request_filter(session, upstream_request, ctx)
            .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut S::CTX,
    ) -> PResult<()> {
        upstream_response.append_header("x-layer", self.name)?;
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        upstream_response.append_header("x-thread", thread)?;
        self.inner
            .response_filter(session, upstream_response, ctx)
            .await
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut S::CTX,
    ) -> PResult<Option<Duration>> {
        self.inner
            .upstream_response_body_filter(session, body, end_of_stream, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut S::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        self.inner.fail_to_connect(session, peer, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut S::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        self.inner
            .error_while_proxy(peer, session, e, ctx, client_reused)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut S::CTX,
    ) -> FailToProxy {
        self.inner.fail_to_proxy(session, e, ctx).await
    }
}

fn layers_of(res: &http::Response<hyper::body::Incoming>) -> Vec<String> {
    res.headers()
        .get_all("x-layer")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn middleware_layer_wraps_the_proxy() {
    let up = upstream("up").await;
    let running = spawn(
        proxy()
            .routes([Route::prefix("/", Upstream::new(&up.url))])
            .middleware(TagLayer("tagged")),
    )
    .await;
    let res = send(running.local_addr(), get_request(running.local_addr(), "/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(layers_of(&res), ["tagged"]);
    assert_eq!(body_text(res).await, "up /");
    running.shutdown().await;
}

#[tokio::test]
async fn middleware_layers_stack_in_service_builder_order() {
    let up = upstream("up").await;
    let running = spawn(
        proxy()
            .routes([Route::prefix("/", Upstream::new(&up.url))])
            .middleware(TagLayer("outer"))
            .middleware(TagLayer("inner")),
    )
    .await;
    let res = send(running.local_addr(), get_request(running.local_addr(), "/")).await;
    assert_eq!(layers_of(&res), ["outer", "inner"]);
    running.shutdown().await;
}

#[tokio::test]
async fn demo_starts_and_answers_through_the_proxy() {
    use pingora_tower_examples::demo::{self, DemoConfig};
    init_tracing();
    let demo = demo::spawn(&DemoConfig::new("127.0.0.1:0"))
        .await
        .expect("demo");
    let addr = demo.proxy_addr();
    assert_eq!(
        http_get(addr, "/").await,
        (StatusCode::OK, "hello from the demo upstream\n".to_owned())
    );
    assert_eq!(
        http_get(addr, "/status/418").await.0,
        StatusCode::IM_A_TEAPOT
    );
    assert!(demo.curl_lines()[0].contains(&addr.to_string()));
    demo.shutdown().await;
}

#[test]
fn demo_flags_override_defaults() {
    use pingora_tower_examples::demo::DemoConfig;
    let args = ["--listen", "127.0.0.1:0", "--upstream=http://127.0.0.1:9"].map(String::from);
    let config = DemoConfig::from_env_and_args(args).unwrap();
    assert_eq!(config.listen, "127.0.0.1:0");
    assert_eq!(config.upstream.as_deref(), Some("http://127.0.0.1:9"));
    assert!(DemoConfig::from_env_and_args(["--nope".to_owned()]).is_err());
}

#[tokio::test]
async fn oversized_request_head_gets_431_without_reaching_the_upstream() {
    let up = upstream("only").await;
    let running = spawn(proxy().routes([Route::prefix("/", Upstream::new(&up.url))])).await;
    let addr = running.local_addr();
    assert_oversized_head_gets_431(addr).await;
    assert_eq!(up.state.hits(), 0);
    assert_eq!(http_get(addr, "/").await.0, StatusCode::OK);
    running.shutdown().await;
}

#[test]
fn zero_upstream_timeouts_are_rejected_naming_the_setting() {
    let zero = Duration::ZERO;
    let build = |b: ProxyBuilder| b.build().map(|_| ()).unwrap_err().to_string();
    let base =
        || PingoraProxy::with_routes("127.0.0.1:0", [Route::prefix("/", "http://127.0.0.1:9")]);
    for (err, field) in [
        (build(base().connect_timeout(zero)), "connect_timeout"),
        (build(base().request_timeout(zero)), "request_timeout"),
        (
            build(base().upstream_response_timeout(zero)),
            "upstream_response_timeout",
        ),
        (
            build(base().upstream_read_timeout(zero)),
            "upstream_read_timeout",
        ),
        (
            build(base().upstream_write_timeout(zero)),
            "upstream_write_timeout",
        ),
        (build(base().with_timeouts(1_000, 0)), "request_ms"),
    ] {
        assert!(err.contains(field), "{err}");
    }
}
