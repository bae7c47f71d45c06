//! A user's own proxy-side layer (the `request_id` example's `ProxyPolicy`), written outside the
//! crates and stacked with the four layers of `middlewares` in a `PingoraProxy`, over real
//! sockets.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use pingora_tower::middleware::proxy_host::{Admission, ProxyPolicy};
use pingora_tower::middleware::{self, Layered};
use pingora_tower::proxy::{PingoraProxy, Route, Upstream};
use pingora_tower::{server, ServeTower};
use pingora_tower_examples::request_id::RequestIds;
use pingora_tower_test_support::*;
use tower::layer::layer_fn;

/// Ids the upstream saw, in order; `/flaky` answers `503` to the first attempt of each id.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

async fn record(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut seen = seen.0.lock().unwrap();
    let first = !seen.contains(&id);
    seen.push(id);
    if first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

#[tokio::test]
async fn a_users_policy_stacks_with_the_four_layers() {
    init_tracing();
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/flaky", get(record))
        .with_state(seen.clone());
    let upstream = server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::new(format!("http://{}", upstream.local_addr())),
        )])
        .middleware(layer_fn(|i| Layered::wrap(RequestIds::default(), i)))
        .middleware(middleware::timeout(5_000))
        .middleware(middleware::rate_limit(100, 60_000))
        .middleware(middleware::retry(2))
        .middleware(middleware::circuit_breaker(50, 10_000))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();

    // A new id: the upstream's 503 is retried, both attempts carry the id, the client gets it.
    let res = send(addr, get_request(addr, "/flaky")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!id.is_empty());
    assert_eq!(*seen.0.lock().unwrap(), [id.clone(), id.clone()]);

    // The client's own id is kept, and a second request gets a different new one.
    let mut req = get_request(addr, "/flaky");
    req.headers_mut()
        .insert("x-request-id", "client-42".parse().unwrap());
    let res = send(addr, req).await;
    assert_eq!(res.headers()["x-request-id"], "client-42");
    let res = send(addr, get_request(addr, "/flaky")).await;
    assert_ne!(res.headers()["x-request-id"].to_str().unwrap(), id);
    assert_eq!(
        seen.0.lock().unwrap().len(),
        6,
        "every request retried once"
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

/// Admission that waits on I/O first (here a timer standing in for a store round trip): denies
/// `/deny` with `403`, lets the rest through.
#[derive(Clone)]
struct AwaitingGate;

impl ProxyPolicy for AwaitingGate {
    type Ctx = ();
    fn new_ctx(&self) {}
    fn request_filter(
        &self,
        session: &mut Session,
        _: &mut (),
    ) -> pingora_error::Result<Admission> {
        let deny = session.req_header().uri.path() == "/deny";
        Ok(Admission::Pending(Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if !deny {
                return Ok(Admission::Continue);
            }
            let mut head = ResponseHeader::build(403, None)?;
            head.insert_header("content-length", "0")?;
            Ok(Admission::Respond(Box::new(head)))
        })))
    }
}

#[tokio::test]
async fn an_admission_that_awaits_io_decides_before_the_upstream() {
    init_tracing();
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/flaky", get(record))
        .route("/deny", get(record))
        .with_state(seen.clone());
    let upstream = server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .unwrap();
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::new(format!("http://{}", upstream.local_addr())),
        )])
        .middleware(layer_fn(|i| Layered::wrap(AwaitingGate, i)))
        .middleware(middleware::retry(2))
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    assert_eq!(http_get(addr, "/deny").await.0, StatusCode::FORBIDDEN);
    assert!(
        seen.0.lock().unwrap().is_empty(),
        "denied before any upstream work"
    );
    assert_eq!(http_get(addr, "/flaky").await.0, StatusCode::OK);
    assert_eq!(seen.0.lock().unwrap().len(), 2);
    proxy.shutdown().await;
    upstream.shutdown().await;
}
