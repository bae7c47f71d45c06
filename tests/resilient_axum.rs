//! The `resilient_axum` example app on plain hyper: all four layers inside `Router::layer`
//! answer as documented, over real TCP on 127.0.0.1.

use std::net::SocketAddr;

use axum::http::StatusCode;
use pingora_tower_examples::resilient_axum;
use pingora_tower_test_support::*;

#[tokio::test]
async fn four_layers_in_router_layer_do_their_jobs() {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = resilient_axum::app().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let res = send(addr, get_request(addr, "/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().contains_key("ratelimit"),
        "rate limit headers exposed"
    );

    for _ in 0..4 {
        // Every other call fails upstream with 503; the retry layer hides it.
        assert_eq!(http_get(addr, "/flaky").await.0, StatusCode::OK);
    }
    assert_eq!(http_get(addr, "/slow?ms=10").await.0, StatusCode::OK);
    assert_eq!(
        http_get(addr, "/slow?ms=3000").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );

    // The breaker sits inside the retry layer, so the /flaky 503s it hid count as failures too:
    // a few 500s are enough to reach 50 % over at least 10 calls.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let status = http_get(addr, "/fail").await.0;
        statuses.push(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
    }
    assert_eq!(
        statuses.first(),
        Some(&StatusCode::INTERNAL_SERVER_ERROR),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let res = send(addr, get_request(addr, "/")).await;
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the breaker is open"
    );
    assert!(res.headers().contains_key("retry-after"));
    server.abort();
}
