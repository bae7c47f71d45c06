//! A user's own proxy-side layer (the `request_id` example's `ProxyPolicy`), written outside the
//! crates and stacked with the four layers of `middlewares` in a `PingoraProxy`, over real
//! sockets.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
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
