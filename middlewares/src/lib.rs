//! Resilience layers for tower services that also run inside a Pingora proxy.
//!
//! Five layers, each a plain [`tower_layer::Layer`]:
//!
//! | layer | short form | answers with |
//! |---|---|---|
//! | [`timeout::TimeoutLayer`] | [`timeout(ms)`](timeout()) | `504 Gateway Timeout` |
//! | [`rate_limit::RateLimitLayer`] | [`rate_limit(limit, period_ms)`](rate_limit()) | `429 Too Many Requests` + `Retry-After` |
//! | [`retry::RetryLayer`] | [`retry(max_retries)`](retry()) | the last attempt's response |
//! | [`circuit_breaker::CircuitBreakerLayer`] | [`circuit_breaker(percent, open_ms)`](circuit_breaker()) | `503 Service Unavailable` + `Retry-After` |
//! | `acl::AclLayer` (feature `acl`) | `AclLayer::builder()` | `403 Forbidden` |
//!
//! HTTP-aware layers never change the inner error type: an axum `Router` (error type
//! `Infallible`) stays `Infallible` and the layer answers with a response instead. Every layer
//! keeps its state (limiter, breaker, budget) in an `Arc` owned by the layer value, so all clones
//! of a service, and a proxy built from the same layer value, share one limit.
//!
//! Time: every layer reads tokio's clock, so tests can pause it
//! (`#[tokio::test(start_paused = true)]`) and `tokio::time::advance` through deadlines,
//! refills and open breakers. The rate limiter and the retry budget, which read the time on
//! every request, read the CPU's cheaper time-stamp counter instead unless tokio's clock is
//! paused where they are built (see [`TimeSource`]).
//!
//! Configuration: each layer has a short form for literals (table above) and one builder for
//! everything, `XLayer::builder(..)` returning an `XBuilder` whose `build()` checks the settings
//! and returns a [`ConfigError`] naming the field and value ([`rate_limit::RateLimitBuilder`],
//! [`retry::RetryBuilder`], [`circuit_breaker::CircuitBreakerBuilder`]). The timeout has no
//! builder: nothing about it can be invalid, so [`timeout::TimeoutLayer::new`] takes chained
//! setters. A refusal renders through [`Rejection`], the same way in both hosts.
//!
//! Features: one per layer (`timeout`, `rate-limit`, `retry`, `circuit-breaker`, `acl`), `full`
//! for all five (on by default with `axum`), and `pingora` for the proxy host. Any subset
//! builds. [`canonical`] (the one spelling of a request's path and host that routes and access
//! rules compare) is always there.
//! `redis` (opt-in) keeps the rate limit's state in Redis ([`rate_limit::redis`]).
//!
//! With the `pingora` feature the same services also implement Pingora's `ProxyHttp`, so a
//! `ServiceBuilder` stack wraps a reverse proxy too (see the `pingora-tower` crate).
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[cfg(not(feature = "full"))] fn main() {}
//! # #[cfg(feature = "full")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(middlewares::timeout(5_000))
//!     .layer(middlewares::rate_limit(100, 1_000))
//!     .layer(middlewares::retry(2))
//!     .layer(middlewares::circuit_breaker(50, 10_000))
//!     .service_fn(|_req: Request<middlewares::retry::ReplayBody<String>>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```

// First, so the forwarding macro is in scope for the layer modules below.
#[cfg(feature = "pingora")]
#[macro_use]
pub mod proxy_host;

#[cfg(feature = "acl")]
pub mod acl;
pub mod canonical;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
#[cfg(feature = "obs")]
pub mod obs;
pub mod observe;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "timeout")]
pub mod timeout;

#[cfg(any(feature = "rate-limit", feature = "retry", feature = "obs"))]
mod clock;
mod config_error;
#[cfg(any(feature = "timeout", feature = "retry", feature = "circuit-breaker"))]
mod cut_off;
mod layered;
mod rejection;
mod request_info;
#[cfg(any(
    feature = "timeout",
    feature = "rate-limit",
    feature = "retry",
    feature = "circuit-breaker"
))]
mod request_time;

#[cfg(any(feature = "rate-limit", feature = "retry", feature = "obs"))]
pub use clock::TimeSource;
pub use config_error::ConfigError;
pub use layered::Layered;
pub use observe::Observer;
pub use rejection::Rejection;
pub use request_info::RequestInfo;

#[cfg(any(
    feature = "timeout",
    feature = "rate-limit",
    feature = "circuit-breaker"
))]
use std::time::Duration;

/// A [`timeout::TimeoutLayer`] that answers `504` when the inner service takes longer than `ms`
/// milliseconds.
#[cfg(feature = "timeout")]
pub fn timeout(ms: u64) -> timeout::TimeoutLayer {
    timeout::TimeoutLayer::new(Duration::from_millis(ms))
}

/// A [`rate_limit::RateLimitLayer`]: one global token bucket of capacity `limit`, refilled at
/// `limit` tokens per `period_ms` milliseconds, rejecting with `429` when empty.
///
/// # Panics
/// When `limit` or `period_ms` is zero. This short form is meant for literals; use
/// [`rate_limit::RateLimitLayer::builder`] for values read at run time, which returns an error
/// instead.
#[cfg(feature = "rate-limit")]
pub fn rate_limit(limit: u32, period_ms: u64) -> rate_limit::RateLimitLayer {
    match rate_limit::RateLimitLayer::builder(limit, Duration::from_millis(period_ms)).build() {
        Ok(layer) => layer,
        Err(e) => panic!("middlewares::rate_limit({limit}, {period_ms}): {e}"),
    }
}

/// A [`retry::RetryLayer`] allowing up to `max_retries` extra attempts for idempotent requests
/// that fail with an error or a `502`/`503`/`504`: statuses 502/503/504, idempotent methods
/// only, backoff 25 ms doubling to 1 s with full jitter, `Retry-After` honoured up to 5 s,
/// budget 20 % of requests plus 10 retries/s over 10 s, 64 KiB body replay, no per-try timeout.
/// [`retry::RetryLayer::builder`] changes any of these.
#[cfg(feature = "retry")]
pub fn retry(max_retries: u32) -> retry::RetryLayer {
    retry::RetryLayer::with_defaults(max_retries)
}

/// A [`circuit_breaker::CircuitBreakerLayer`] over a count-based window of the last 20 calls that
/// opens when at least 10 calls were seen and `failure_rate_percent` of them failed, stays open
/// `open_ms` milliseconds, then lets 3 trial calls through half-open.
///
/// # Panics
/// When `failure_rate_percent` is 0 or above 100. Use
/// [`circuit_breaker::CircuitBreakerLayer::builder`] for values read at run time.
#[cfg(feature = "circuit-breaker")]
pub fn circuit_breaker(
    failure_rate_percent: u8,
    open_ms: u64,
) -> circuit_breaker::CircuitBreakerLayer {
    match circuit_breaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(failure_rate_percent)
        .wait_in_open(Duration::from_millis(open_ms))
        .build()
    {
        Ok(layer) => layer,
        Err(e) => panic!("middlewares::circuit_breaker({failure_rate_percent}, {open_ms}): {e}"),
    }
}
