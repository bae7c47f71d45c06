//! Whole-request deadlines: answer `504 Gateway Timeout` when the inner service is too slow.
//!
//! [`TimeoutLayer::new(d)`](TimeoutLayer::new) gives every request `d` from the moment the
//! service is called until the inner service returns its response head. When the deadline passes
//! the inner future is dropped (cancelling its work, e.g. an upstream request) and the layer
//! answers with an empty response carrying the configured status (`504` by default, see
//! [`TimeoutLayer::status`]). The inner error type is unchanged: an axum `Router` stays
//! `Infallible`.
//!
//! # Options
//! - [`TimeoutLayer::status`]: the status of the timeout answer.
//! - [`TimeoutLayer::honor_client_header`]: let clients shorten (never lengthen) their own
//!   deadline with the [`x-request-timeout`](REQUEST_TIMEOUT_HEADER) header, in milliseconds.
//! - [`TimeoutLayer::with_body_deadline`]: a [`BodyTimeoutLayer`] whose deadline also covers
//!   the response body. Its responses carry a [`TimeoutBody`], which ends with a boxed
//!   [`Elapsed`] error when the deadline passes mid-stream (the status line has been sent by
//!   then, so the connection is cut rather than answered with `504`). A separate layer because it
//!   changes the response body type; the common case keeps the inner body type.
//!
//! # Cost
//! Creating, registering and dropping a tokio timer is the costly part of a timeout (figures:
//! the crate's `README.md`, *Figures behind the docs*). The response future
//! polls the inner future first and arms its timer only when that returns `Pending`, so
//! responses that are ready at once pay only for one clock read in `call` (which the rate-limit,
//! retry and circuit-breaker layers of this crate inside it reuse rather than read the clock
//! again). The deadline is computed in `call`, so arming late does not extend it.
//!
//! # With a circuit breaker
//! When the deadline passes the inner call is dropped as *cut off by a deadline*, so a
//! [circuit breaker](mod@crate::circuit_breaker) anywhere inside records the backend's failure (and
//! a slow call) rather than a cancellation; one outside sees the `504`. The expiry of a deadline
//! the client shortened (`x-request-timeout`) counts for nothing in either order: the call is
//! dropped as cancelled and the answer's [`Elapsed`] says it was the client's.
//!
//! # Hosts and ordering
//! The tower host runs layers in stack order: a timeout outside a rate limiter that queues
//! counts the queueing time, one inside it does not. The Pingora host runs admission (rate
//! limiting) in `request_filter` first, whatever the stack order, and stamps the deadline there
//! with [`TimeoutLayer::deadline_for`]; it clamps the upstream connect/read/write timeouts to
//! what is left and fails with [`TimeoutLayer::response_status`] (the status [`Elapsed`]
//! renders through [`Rejection`](crate::Rejection)), so both hosts compute the same deadline
//! and answer with the same status.
//!
//! # Example
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use middlewares::timeout::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(1)).honor_client_header(true))
//!     .service_fn(|_req: Request<String>| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, Infallible>(Response::new(String::from("too late")))
//!     });
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
//! assert!(res.body().is_empty());
//! # }
//! ```

mod body;
mod error;
pub mod future;
mod layer;
#[cfg(feature = "pingora")]
mod proxy;

use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Request, Response};
use tower_service::Service;

pub use self::body::TimeoutBody;
pub use self::error::Elapsed;
pub use self::layer::{BodyTimeoutLayer, TimeoutLayer};
#[cfg(feature = "pingora")]
pub use self::proxy::TimeoutProxyCtx;

use self::future::{BodyResponseFuture, ResponseFuture};
use crate::{request_time, Layered};

/// The request header a client may use to ask for a shorter deadline, in milliseconds
/// (`x-request-timeout: 250`). Read only when [`TimeoutLayer::honor_client_header`] is on.
pub const REQUEST_TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-request-timeout");

/// Service built by [`TimeoutLayer`]: answers with the configured status (`504`) when the inner
/// service does not return its response head before the request's deadline.
pub type Timeout<S> = Layered<TimeoutLayer, S>;

impl<S> Timeout<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub const fn new(inner: S, layer: TimeoutLayer) -> Self {
        Layered::wrap(layer, inner)
    }

    #[inline]
    fn start<ReqBody>(&mut self, req: Request<ReqBody>) -> ResponseFuture<S::Future>
    where
        S: Service<Request<ReqBody>>,
    {
        // The one clock read of this layer (shared with the layers inside, see `request_time`);
        // the timer is armed later, only if needed.
        let time = request_time::read();
        let (deadline, elapsed) = self.policy.request_deadline(req.headers(), time.now());
        ResponseFuture::new(self.inner.call(req), deadline, elapsed)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Timeout<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.start(req)
    }
}

/// Service built by [`BodyTimeoutLayer`]: like [`Timeout`], and the response body is a
/// [`TimeoutBody`] that fails when the same deadline passes while it streams.
#[derive(Debug, Clone)]
pub struct BodyTimeout<S> {
    inner: Timeout<S>,
}

impl<S> BodyTimeout<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: TimeoutLayer) -> Self {
        BodyTimeout {
            inner: Timeout::new(inner, layer),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BodyTimeout<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<TimeoutBody<ResBody>>;
    type Error = S::Error;
    type Future = BodyResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        BodyResponseFuture::new(self.inner.start(req))
    }
}
