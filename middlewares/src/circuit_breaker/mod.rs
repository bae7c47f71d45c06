//! Circuit breaker: stop calling a failing service, answer `503` + `Retry-After` meanwhile.
//!
//! The model is Resilience4j's. A breaker watches the outcomes of recent calls in a sliding
//! window and moves between states:
//!
//! ```text
//!                 failure rate or slow-call rate >= threshold
//!                 (once the window holds the minimum calls),
//!                 or N consecutive failures
//!      ┌────────┐ ───────────────────────────────────────▶ ┌──────┐
//!      │ Closed │                                          │ Open │ ──▶ 503 + Retry-After,
//!      └────────┘ ◀──────────┐                             └──────┘     inner not called
//!           ▲                │ every trial call done,        │   ▲
//!           │                │ rates below thresholds        │   │ rates >= threshold
//!           │                │                 wait_in_open  │   │ among the trial calls
//!           │                │                      elapsed  ▼   │ (wait grows with backoff)
//!           │                └─────────────────────────── ┌──────────┐
//!           │                                             │ HalfOpen │ at most N trial calls
//!           │                                             └──────────┘
//!      reset (handle)    ForcedOpen · ForcedClosed · Disabled: set through the handle only
//! ```
//!
//! - **Closed**: calls pass; outcomes fill the window. Once it holds at least `minimum_calls`
//!   calls and the failure rate (or the slow-call rate) reaches its threshold, the breaker
//!   opens. [`consecutive_failures`](CircuitBreakerBuilder::consecutive_failures) opens it
//!   after that many failures in a row regardless.
//! - **Open**: calls are answered `503 Service Unavailable` with `Retry-After` (the time left,
//!   in whole seconds rounded up) and the inner service is not called. After `wait_in_open`
//!   the next call attempt moves the breaker to half-open. With
//!   [`wait_in_open_backoff`](CircuitBreakerBuilder::wait_in_open_backoff) each reopen waits
//!   longer, until the breaker closes again.
//! - **HalfOpen**: at most `permitted_calls_in_half_open` trial calls are in flight, even under
//!   concurrency; the rest get `503`. A trial whose future is dropped (cancelled) gives its slot
//!   back without counting. When the trials' failure rate reaches the threshold the breaker
//!   reopens (as soon as that is certain); when every trial is done below it, it closes with an
//!   empty window.
//!
//! # Defaults
//! The short form [`circuit_breaker(percent, open_ms)`](crate::circuit_breaker()) and
//! [`CircuitBreakerLayer::builder`] use: a count window of the last 20 calls
//! ([`Window::Count`]; [`Window::Time`] buckets per second instead), at least 10 calls before
//! it may open, failure-rate threshold 50 % (the short form sets its own), 60 s in open (idem),
//! 3 trial calls, no slow-call tracking, no consecutive-failure trigger, no backoff, no jitter.
//!
//! # Classifier
//! By default an inner `Err` and a `5xx` response are failures; everything else, `4xx`
//! included, succeeds. [`CircuitBreakerBuilder::classify`] replaces that with a function of
//! `Result<StatusCode, ()>` (`Err(())` = no response at all) returning an [`Outcome`]; it knows
//! nothing of the body or error type, so the Pingora host feeds it upstream statuses and
//! connect errors the same way. [`Outcome::Ignored`] leaves a call out of the counts.
//!
//! # Whose failure counts
//! Only the backend's, in both hosts:
//! - A call cut off by one of this crate's deadlines (the [timeout](mod@crate::timeout) layer's, or
//!   retry's per-try timeout) is a **failure, and a slow call**, whatever the order of the
//!   layers: the timeout drops the call in a way the breaker's [`Permit`] recognises, so a
//!   timeout outside the breaker (the order of the crate example) counts just like one inside,
//!   where the breaker sees the `504`. A backend that hangs is what a breaker is for.
//! - A call the caller abandons (the client went away, the future was dropped) counts for
//!   nothing, and so does the expiry of a deadline the client shortened itself with
//!   `x-request-timeout` (its `504` carries an [`Elapsed`](crate::timeout::Elapsed) marked
//!   [`is_client_deadline`](crate::timeout::Elapsed::is_client_deadline)). In the proxy host,
//!   an error whose source is the client (it closed, sent a malformed body) releases the permit
//!   unrecorded too.
//!
//! A call admitted before the breaker changed state is **not recorded after the change**: each
//! permit carries the state's epoch, and an outcome from an older epoch is dropped (a half-open
//! slot it held is given back). Resilience4j records such a call in the new state instead. We
//! drop it because the call was judged by the old state's rules: calls admitted just before the
//! breaker opened would otherwise fail the half-open trials they never were, and slow calls from
//! the closed state would count against a freshly closed window.
//!
//! # Keyed breakers
//! Without a key function there is one breaker (key [`DEFAULT_KEY`]) and the request path
//! neither hashes nor allocates. [`CircuitBreakerBuilder::key_fn`] gives each key its own
//! breaker, e.g. per path prefix or per tenant header; the registry ([`Breakers`]) is bounded
//! by [`max_keys`](CircuitBreakerBuilder::max_keys). [`CircuitBreakerHandle`] reads states and
//! metrics and forces states per key; [`on_state_transition`](CircuitBreakerBuilder::on_state_transition)
//! hears every transition.
//!
//! # Driving the core directly
//! [`Breaker`] holds no tower or Pingora types: `try_acquire(now)` returns a [`Permit`] or a
//! [`CircuitOpen`], `Permit::record(outcome, now)` settles the call, and
//! `is_call_permitted(now)` checks without taking a permit (peer selection). The proxy host
//! keeps one breaker per upstream address in [`CircuitBreakerLayer::breakers`]. Both hosts
//! render a [`CircuitOpen`] through [`Rejection`](crate::Rejection), so they answer alike.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use middlewares::circuit_breaker::{CircuitBreakerLayer, State, Window, DEFAULT_KEY};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = CircuitBreakerLayer::builder()
//!     .failure_rate_threshold(50)
//!     .sliding_window(Window::Count(4))
//!     .minimum_calls(4)
//!     .wait_in_open(Duration::from_secs(30))
//!     .build()
//!     .expect("valid settings");
//! let handle = layer.handle();
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: Request<String>| async {
//!         let mut res = Response::new(String::new());
//!         *res.status_mut() = StatusCode::BAD_GATEWAY;
//!         Ok::<_, Infallible>(res)
//!     });
//!
//! for _ in 0..4 {
//!     let res = svc.ready().await.unwrap().call(Request::new(String::new())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
//! }
//! assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
//!
//! let res = svc.ready().await.unwrap().call(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "30");
//! # }
//! ```

mod breaker;
mod error;
pub mod future;
mod layer;
#[cfg(feature = "pingora")]
mod proxy;
mod registry;
mod window;

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

pub use self::breaker::{Breaker, Metrics, Outcome, Permit, State};
pub use self::error::{CircuitOpen, ConfigError};
pub use self::layer::{CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer};
#[cfg(feature = "pingora")]
pub use self::proxy::CircuitBreakerProxyCtx;
pub use self::registry::Breakers;
pub use self::window::Window;

use self::future::ResponseFuture;
use self::layer::{KeyFn, Route};
use crate::{request_time, Layered, RequestInfo};

/// The key of the single breaker of a layer without a key function.
pub const DEFAULT_KEY: &str = "default";

/// Calls the inner service while its breaker admits calls; answers `503` + `Retry-After`
/// otherwise. Built by [`CircuitBreakerLayer`]; clones share the breakers.
pub type CircuitBreaker<S> = Layered<CircuitBreakerLayer, S>;

impl<S> CircuitBreaker<S> {
    /// The breakers this service shares with its layer (the proxy host keys them by upstream
    /// address).
    pub fn breakers(&self) -> &Breakers {
        &self.policy.shared.breakers
    }

    /// A handle on the same breakers as [`CircuitBreakerLayer::handle`].
    pub fn handle(&self) -> CircuitBreakerHandle {
        self.policy.handle()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let admitted = match &self.policy.shared.route {
            Route::Single(breaker) => breaker.try_acquire_with(request_time::now),
            Route::Keyed(key_fn) => {
                return call_keyed(&mut self.inner, &self.policy.shared.breakers, key_fn, req)
            }
        };
        call_admitted(&mut self.inner, req, admitted)
    }
}

/// `call` with a breaker per key. Out of line: a request borrowed (for its key) where the
/// single-breaker path runs was copied (over 200 bytes) before being handed to the inner
/// service, on that path too.
#[inline(never)]
fn call_keyed<S, ReqBody>(
    inner: &mut S,
    breakers: &Breakers,
    key_fn: &KeyFn,
    req: Request<ReqBody>,
) -> ResponseFuture<S::Future>
where
    S: Service<Request<ReqBody>>,
{
    let key = key_fn(&RequestInfo::from_request(&req));
    let admitted = breakers.get(&key).try_acquire_with(request_time::now);
    call_admitted(inner, req, admitted)
}

/// Calls `inner` with the permit, or answers for the open breaker.
#[inline(always)]
fn call_admitted<S, ReqBody>(
    inner: &mut S,
    req: Request<ReqBody>,
    admitted: Result<Permit, CircuitOpen>,
) -> ResponseFuture<S::Future>
where
    S: Service<Request<ReqBody>>,
{
    match admitted {
        Ok(permit) => ResponseFuture::called(inner.call(req), permit),
        Err(open) => rejected(open),
    }
}

/// The answer of an open breaker. Cold: the log call kept `call` from being inlined.
#[cold]
#[inline(never)]
fn rejected<F>(open: CircuitOpen) -> ResponseFuture<F> {
    tracing::debug!(
        state = %open.state(),
        retry_after_secs = open.retry_after_secs(),
        "circuit breaker rejected request"
    );
    ResponseFuture::open(open)
}
