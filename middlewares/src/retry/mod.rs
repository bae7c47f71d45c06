//! Retries failed requests: idempotent ones, with exponential backoff, full jitter, a shared
//! retry budget, `Retry-After`, request-body replay and an optional per-try timeout.
//!
//! # What is retried
//! A request gets up to `max_retries` extra attempts when **all** of these hold:
//!
//! - **The request may be repeated.** Its method is idempotent per RFC 9110 §9.2.2 — `GET`,
//!   `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE` — or it carries an `Idempotency-Key` header and
//!   [`RetryBuilder::retry_with_idempotency_key`] is on. A plain `POST` or `PATCH` is sent once.
//! - **The attempt failed:** the inner service returned an error, the attempt exceeded the
//!   per-try timeout, or the response status is retryable (default `502`, `503`, `504`; see
//!   [`RetryBuilder::retry_on_statuses`]). The failed response and its body are dropped before the
//!   next attempt. A `503` answered by this crate's circuit breaker (it carries
//!   [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) in its extensions) is never retried:
//!   the breaker fails fast on purpose, and waiting out its `Retry-After` would only hold the
//!   request until an outer timeout fires.
//! - **The server did not ask for too long a pause:** a `Retry-After` on a `429` or `503` (when
//!   that status is retryable) replaces the backoff delay, up to
//!   [`RetryBuilder::max_retry_after`] (default 5 s); a longer one means the response is returned
//!   as is. Only the delta-seconds form (`Retry-After: 2`) is read; the HTTP-date form needs the
//!   wall clock and is ignored (the normal backoff applies).
//! - **The budget allows it.** One [`Budget`] per layer, shared by every service and clone the
//!   layer makes: over a 10 s window, retries may not exceed 20 % of the requests eligible for a
//!   retry plus 10 retries per second. When it is empty the last response (or error) is returned,
//!   so a failing backend does not get a retry storm.
//! - **The body can be replayed** (below).
//!
//! When no retry follows, the last attempt's response or error is returned unchanged; a last
//! attempt that timed out is answered `504 Gateway Timeout` with an empty body
//! ([`AttemptTimedOut`]). The inner error type is kept, so an axum `Router` stays `Infallible`.
//!
//! # Backoff
//! Before retry `n` (0 for the first) the layer waits a random delay in
//! `[0, min(cap, base × 2^n)]` ("full jitter"), base 25 ms and cap 1 s by default
//! ([`RetryBuilder::backoff_base`], [`RetryBuilder::backoff_cap`]). With
//! [`RetryBuilder::jitter`]`(false)` the delay is exactly `min(cap, base × 2^n)`.
//!
//! # Request bodies
//! The inner service receives `Request<`[`ReplayBody<B>`]`>`. On the first attempt the original
//! body streams through unchanged while up to [`RetryBuilder::max_replay_body`] bytes (default
//! 64 KiB) are kept (reference-counted `Bytes`, not copied). Later attempts replay exactly those
//! bytes and trailers. A request is retried only if its whole body was seen by the time the
//! attempt failed: a body longer than the limit (skipped up front when its size hint says so), a
//! body the inner service had not finished reading, or a body that failed is sent once and its
//! first response returned. Requests without a body need no buffer and allocate nothing for it.
//!
//! # Costs
//! A request that cannot be retried costs one branch. A retryable one clones the request head
//! (for later attempts) and the inner service, reads the clock once (or reuses the read of an
//! outer layer of this crate) and adds to the budget (one atomic add, plus a roll-over at most
//! once per tenth of the window); the capture buffer is allocated only for requests with a body.
//! The response future is a named type; nothing is boxed.
//!
//! # Pingora
//! The decision core — [`RetryPolicy`], [`Backoff`], [`Budget`], [`parse_retry_after`] — holds no
//! tower or Pingora types; the proxy host reads it through [`RetryLayer::policy`],
//! [`RetryLayer::backoff`] and [`RetryLayer::budget`] and applies the same rules from its phases.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use http::{Request, Response, StatusCode};
//! use middlewares::retry::RetryLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = RetryLayer::builder(2)
//!     .backoff_base(Duration::from_millis(10))
//!     .per_try_timeout(Duration::from_secs(1))
//!     .retry_with_idempotency_key(true)
//!     .build()
//!     .expect("valid retry settings");
//!
//! let calls = Arc::new(AtomicUsize::new(0));
//! let svc = ServiceBuilder::new().layer(layer).service_fn({
//!     let calls = calls.clone();
//!     move |_req| {
//!         // Fails twice with 503, then succeeds.
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let mut res = Response::new(String::new());
//!             if n < 2 {
//!                 *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!             }
//!             Ok::<_, Infallible>(res)
//!         }
//!     }
//! });
//!
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```

mod backoff;
mod body;
mod budget;
mod error;
pub mod future;
mod layer;
mod policy;
#[cfg(feature = "pingora")]
mod proxy;

use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

pub use self::backoff::Backoff;
pub use self::body::ReplayBody;
pub use self::budget::Budget;
pub use self::error::{AttemptTimedOut, ConfigError};
pub use self::future::ResponseFuture;
pub use self::layer::{RetryBuilder, RetryLayer};
pub use self::policy::{
    is_idempotent, parse_retry_after, ResponseClass, RetryPolicy, IDEMPOTENCY_KEY,
};
#[cfg(feature = "pingora")]
pub use self::proxy::RetryProxyCtx;

use self::body::Source;
use self::future::Head;
use crate::{request_time, Layered};

/// Retries failed requests to the inner service `S`; made by [`RetryLayer`]. See the
/// [module docs](self).
///
/// Clones share the layer's [`Budget`].
pub type Retry<S> = Layered<RetryLayer, S>;

impl<S> Retry<S> {
    /// The retry rules.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy.shared.policy
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.policy.shared.backoff
    }

    /// The retry budget shared with the layer and every clone.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.policy.shared.budget
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Retry<S>
where
    S: Service<Request<ReplayBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let policy = &self.policy.shared.policy;
        if policy.max_retries == 0 || !policy.is_retryable_request(req.method(), req.headers()) {
            let per_try_timeout = policy.per_try_timeout;
            let fut = self.inner.call(req.map(ReplayBody::passthrough));
            return ResponseFuture::once(fut, per_try_timeout);
        }
        if req.body().is_end_stream() {
            // The common retryable request, one without a body: nothing to capture. The body
            // is wrapped with `map` and the head for later attempts cloned where it lies: every
            // move of the request (over 250 bytes) on this path is a `memcpy`.
            self.first_attempt(req.map(ReplayBody::passthrough), Source::Empty)
        } else {
            self.call_with_body(req)
        }
    }
}

impl<S> Retry<S> {
    /// `call` of a retryable request that may have a body: captured for replay up to the
    /// limit, or sent through and not retried when it is known to be larger. Out of line, so
    /// the bodiless path above stays small enough to inline.
    #[inline(never)]
    fn call_with_body<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReplayBody<ReqBody>>, Response = Response<ResBody>> + Clone,
        ReqBody: Body,
    {
        let limit = self.policy.shared.policy.max_replay_body;
        let mut source = None;
        let req = req.map(|body| match ReplayBody::capture(body, limit) {
            Ok((body, captured)) => {
                source = Some(captured);
                body
            }
            Err(body) => ReplayBody::passthrough(body),
        });
        match source {
            Some(source) => self.first_attempt(req, source),
            None => {
                tracing::debug!(
                    limit,
                    "request body larger than the replay limit; it will not be retried"
                );
                let per_try_timeout = self.policy.shared.policy.per_try_timeout;
                ResponseFuture::once(self.inner.call(req), per_try_timeout)
            }
        }
    }

    /// Makes the first attempt of a retryable request whose later attempts replay `source`.
    #[inline(always)]
    fn first_attempt<ReqBody, ResBody>(
        &mut self,
        req: Request<ReplayBody<ReqBody>>,
        source: Source,
    ) -> ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReplayBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    {
        // The request time on the budget's timeline: the instant the layers around this one
        // read (see `request_time`), else the budget's clock; a read of tokio's clock is shared
        // with the layers inside until `time` drops.
        let budget = &self.policy.shared.budget;
        let mut time = None;
        let now = match request_time::published() {
            Some(now) => budget.nanos(now),
            None => match budget.counter_nanos() {
                Some(now) => now,
                None => budget.nanos(time.insert(request_time::read()).now()),
            },
        };
        budget.deposit_nanos(now);
        let later_head = Head::of(&req);
        // Call the instance that was polled ready and keep it for the retries (each polled ready
        // again first); `self` keeps a fresh clone for its next `poll_ready`.
        let fresh = self.inner.clone();
        let mut service = mem::replace(&mut self.inner, fresh);
        let fut = service.call(req);
        ResponseFuture::retrying(
            fut,
            service,
            later_head,
            source,
            Arc::clone(&self.policy.shared),
        )
    }
}
