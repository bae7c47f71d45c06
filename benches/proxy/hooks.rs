//! The proxy-host hooks of each layer over a bare `ProxyHttp`, without sockets:
//! `cargo bench -p pingora-tower-proxy-bench --bench proxy_hooks`.
//!
//! One request's worth of Pingora phases, called in Pingora's order on a `Session` read once
//! from an in-memory HTTP/1.1 request (`GET / HTTP/1.1`, no client address): `new_ctx`,
//! `early_request_filter`, `request_filter`, `request_cache_filter`, `proxy_upstream_filter`,
//! `upstream_peer`, `upstream_request_filter`, `request_body_filter`,
//! `upstream_response_filter`, `response_filter`, `upstream_response_body_filter`,
//! `response_body_filter`, `logging`. No I/O happens, so this is the layers' own cost per
//! request (plus a request and a response head clone, in every variant).
//!
//! Variants: `bare` (a `ProxyHttp` that returns a fixed peer), each layer over it (the access
//! list with a path and a method rule), the four
//! together (timeout, rate limit, retry, circuit breaker, as `pingora-tower-proxy --layers
//! four`), and the same over `PingoraProxy`'s `RoutingProxy` (one prefix route).

// Times real runs of the proxy hooks: wall-clock `std::time::Instant` is the point.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use pingora_tower::middleware;
use pingora_tower::proxy::{PingoraProxy, Route, Upstream};
use tokio::runtime::Runtime;
use tower::ServiceBuilder;

/// A rate far above what the bench reaches: the limiter never rejects.
const NEVER_TRIPS_PER_SECOND: u32 = 1_000_000_000;

/// The bare proxy: a fixed peer, every other hook Pingora's default.
struct Bare;

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new("127.0.0.1:9", false, String::new())))
    }
}

/// The phases of one proxied request, in Pingora's order.
async fn one_request<P>(
    proxy: &P,
    session: &mut Session,
    request: &RequestHeader,
    response: &ResponseHeader,
) where
    P: ProxyHttp + Send + Sync,
    P::CTX: Send + Sync,
{
    let mut ctx = proxy.new_ctx();
    proxy.early_request_filter(session, &mut ctx).await.unwrap();
    assert!(!proxy.request_filter(session, &mut ctx).await.unwrap());
    proxy.request_cache_filter(session, &mut ctx).unwrap();
    assert!(proxy
        .proxy_upstream_filter(session, &mut ctx)
        .await
        .unwrap());
    let peer = proxy.upstream_peer(session, &mut ctx).await.unwrap();
    let mut upstream_request = request.clone();
    proxy
        .upstream_request_filter(session, &mut upstream_request, &mut ctx)
        .await
        .unwrap();
    let mut no_body = None;
    proxy
        .request_body_filter(session, &mut no_body, true, &mut ctx)
        .await
        .unwrap();
    let mut head = response.clone();
    proxy
        .upstream_response_filter(session, &mut head, &mut ctx)
        .await
        .unwrap();
    proxy
        .response_filter(session, &mut head, &mut ctx)
        .await
        .unwrap();
    let mut body = Some(Bytes::from_static(b"x"));
    proxy
        .upstream_response_body_filter(session, &mut body, true, &mut ctx)
        .unwrap();
    proxy
        .response_body_filter(session, &mut body, true, &mut ctx)
        .unwrap();
    proxy.logging(session, None, &mut ctx).await;
    black_box((peer, upstream_request, head, body));
}

/// A session read from an in-memory request, as a listener would hand it over.
fn session(rt: &Runtime) -> Session {
    let raw = b"GET / HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\n\r\n".to_vec();
    let mut session = Session::new_h1(Box::new(Cursor::new(raw)));
    assert!(rt.block_on(session.read_request()).unwrap());
    session
}

fn bench<P>(c: &mut Criterion, rt: &Runtime, name: &str, proxy: &P)
where
    P: ProxyHttp + Send + Sync,
    P::CTX: Send + Sync,
{
    let mut session = session(rt);
    let request = session.req_header().clone();
    let response = ResponseHeader::build(200, Some(2)).unwrap();
    c.bench_function(&format!("proxy_hooks/{name}"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    one_request(proxy, &mut session, &request, &response).await;
                }
                start.elapsed()
            })
        })
    });
}

fn hooks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench(c, &rt, "bare", &Bare);
    bench(
        c,
        &rt,
        "timeout",
        &ServiceBuilder::new()
            .layer(middleware::timeout(30_000))
            .service(Bare),
    );
    bench(
        c,
        &rt,
        "rate_limit",
        &ServiceBuilder::new()
            .layer(middleware::rate_limit(NEVER_TRIPS_PER_SECOND, 1_000))
            .service(Bare),
    );
    bench(
        c,
        &rt,
        "retry",
        &ServiceBuilder::new()
            .layer(middleware::retry(2))
            .service(Bare),
    );
    bench(
        c,
        &rt,
        "circuit_breaker",
        &ServiceBuilder::new()
            .layer(middleware::circuit_breaker(50, 10_000))
            .service(Bare),
    );
    // Path and method rules (the in-memory session has no client address for IP rules).
    let acl = middleware::acl::AclLayer::builder()
        .rule(middleware::acl::Rule::deny().path_prefix("/admin"))
        .rule(middleware::acl::Rule::deny().method(http::Method::DELETE))
        .build()
        .unwrap();
    bench(
        c,
        &rt,
        "acl",
        &ServiceBuilder::new().layer(acl).service(Bare),
    );
    bench(
        c,
        &rt,
        "four",
        &ServiceBuilder::new()
            .layer(middleware::timeout(30_000))
            .layer(middleware::rate_limit(NEVER_TRIPS_PER_SECOND, 1_000))
            .layer(middleware::retry(2))
            .layer(middleware::circuit_breaker(50, 10_000))
            .service(Bare),
    );

    let route = || Route::prefix("/", Upstream::new("http://127.0.0.1:9"));
    let routing = PingoraProxy::builder("127.0.0.1:0")
        .route(route())
        .build()
        .unwrap();
    bench(c, &rt, "routing", routing.service());
    let routing_four = PingoraProxy::builder("127.0.0.1:0")
        .route(route())
        .middleware(middleware::timeout(30_000))
        .middleware(middleware::rate_limit(NEVER_TRIPS_PER_SECOND, 1_000))
        .middleware(middleware::retry(2))
        .middleware(middleware::circuit_breaker(50, 10_000))
        .build()
        .unwrap();
    bench(c, &rt, "routing_four", routing_four.service());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hooks
}
criterion_main!(benches);
