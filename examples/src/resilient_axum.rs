//! An axum app with all four `middlewares` layers stacked by `ServiceBuilder` inside
//! `Router::layer`, served by plain hyper (`axum::serve`): no Pingora involved.
//! Run it with `cargo run --example resilient_axum`.
//!
//! Routes: `/` answers at once; `/slow?ms=N` sleeps (the timeout answers `504` past 2 s);
//! `/flaky` fails every other call with `503` (the retry layer hides it); `/fail` always answers
//! `500` (the breaker opens after 10 calls and answers `503` for 5 s). The limiter admits
//! [`RATE_PER_SECOND`] requests per second per client IP.
//!
//! # Example
//! ```no_run
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = pingora_tower_examples::resilient_axum::app();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! )
//! .await
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use middlewares::rate_limit::{Key, RateLimitLayer};
use tower::ServiceBuilder;

/// Requests per second each client IP may make.
pub const RATE_PER_SECOND: u32 = 50;

/// The app: routes plus the four layers, outermost first.
///
/// # Panics
/// Never in practice: the rate limiter's configuration is a valid constant.
pub fn app() -> Router {
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let per_ip = RateLimitLayer::builder(RATE_PER_SECOND, Duration::from_secs(1))
        .key(Key::ClientIp)
        .expose_headers(true)
        .build()
        .expect("a valid constant configuration");
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/slow",
            get(|Query(q): Query<HashMap<String, u64>>| async move {
                let ms = q.get("ms").copied().unwrap_or(3_000).min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slept {ms} ms\n")
            }),
        )
        .route(
            "/flaky",
            get(move || {
                let n = flaky_calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n % 2 == 0 {
                        (StatusCode::SERVICE_UNAVAILABLE, "try again\n")
                    } else {
                        (StatusCode::OK, "ok after a retry\n")
                    }
                }
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken\n") }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(middlewares::timeout(2_000))
                .layer(per_ip)
                .layer(middlewares::retry(2))
                .layer(middlewares::circuit_breaker(50, 5_000)),
        )
}
