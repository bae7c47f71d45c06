//! The Pingora host: every layer's service also implements Pingora's `ProxyHttp`.
//!
//! With the `pingora` feature, `ServiceBuilder::new().layer(a).layer(b).service(my_proxy)` is a
//! `ProxyHttp` that `pingora_proxy::http_proxy_service` accepts, and the layer values keep one
//! shared state for both hosts: a limiter used by an axum app and by a proxy counts both.
//!
//! Each layer maps its policy onto Pingora's phases through [`ProxyPolicy`]; one macro writes
//! the `ProxyHttp` impl for every layer's service, forwarding all methods to the inner proxy and
//! calling the policy at the few phases where it acts:
//!
//! | layer | phases |
//! |---|---|
//! | rate limit | `request_filter`: 429 before any upstream work |
//! | timeout | `request_filter` stamps the deadline; `upstream_peer` clamps connect/read/write timeouts to what is left; body filter aborts past it; `fail_to_proxy` answers 504 |
//! | retry | `fail_to_connect`, `error_while_proxy`, `upstream_response_filter` (retryable status becomes a retryable error); backoff before the next `upstream_peer` |
//! | circuit breaker | a permit per backend in `upstream_peer` (an open backend is skipped by asking the inner proxy for another); outcome recorded from the failure hooks and the response status; a permit still held when the request ends is released unrecorded with the context |
//!
//! **Order.** A tower stack runs its layers in stack order. In a proxy, Pingora fixes the order of
//! phases: admission (`request_filter`) for every layer happens before peer selection, which
//! happens before the exchange. Within one phase the outer layer acts first on the way in and
//! last on the way out (it sees the inner layer's decision on an error and may change it).
//!
//! # Example
//! ```no_run
//! use async_trait::async_trait;
//! use pingora_core::upstreams::peer::HttpPeer;
//! use pingora_proxy::{ProxyHttp, Session};
//! use tower::ServiceBuilder;
//!
//! struct MyProxy;
//!
//! #[async_trait]
//! impl ProxyHttp for MyProxy {
//!     type CTX = ();
//!     fn new_ctx(&self) {}
//!     async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> pingora_error::Result<Box<HttpPeer>> {
//!         Ok(Box::new(HttpPeer::new("127.0.0.1:9000", false, String::new())))
//!     }
//! }
//!
//! let proxy = ServiceBuilder::new()
//!     .layer(middlewares::timeout(5_000))
//!     .layer(middlewares::rate_limit(10_000, 1_000))
//!     .layer(middlewares::retry(2))
//!     .layer(middlewares::circuit_breaker(50, 10_000))
//!     .service(MyProxy);
//! fn is_proxy<P: ProxyHttp>(_: &P) {}
//! is_proxy(&proxy);
//! ```

#[macro_use]
mod forward;

use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// The per-request context of a layered proxy: the inner proxy's context and the layer's own.
#[derive(Debug, Default)]
pub struct LayerCtx<I, O> {
    /// The wrapped proxy's context.
    pub inner: I,
    /// This layer's per-request state.
    pub own: O,
}

/// What a layer decides about the peer the inner proxy picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChoice {
    /// Use it.
    Accept,
    /// Ask the inner proxy for another peer (e.g. this backend's breaker is open).
    Skip,
}

/// What a layer decides when a request arrives.
#[derive(Debug)]
pub enum Admission {
    /// Go on: the inner proxy's `request_filter` runs next.
    Continue,
    /// Wait this long, then go on (a rate limiter's queue).
    Wait(Duration),
    /// Answer with this head and no body; the request ends (the connection is not reused, as
    /// the request body may be unread).
    Respond(Box<ResponseHeader>),
}

/// The optional hooks a policy acts in. The generated `ProxyHttp` impl returns the inner
/// proxy's future unchanged at a phase whose hook is off, so a layer costs nothing (not even an
/// allocation) at phases it does not use; a policy that overrides one of these hooks must turn
/// it on here, or the hook is never called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    /// [`ProxyPolicy::select_peer`] sees every peer and [`ProxyPolicy::no_peer`] every failure
    /// to find one.
    pub select_peer: bool,
    /// [`ProxyPolicy::upstream_response_filter`] sees every upstream response head.
    pub upstream_response_filter: bool,
    /// [`ProxyPolicy::response_filter`] sees every response head going downstream.
    pub response_filter: bool,
}

/// How many times one request may ask the inner proxy for another peer before giving up.
pub const MAX_PEER_SKIPS: usize = 32;

/// A layer's policy mapped onto Pingora's proxy phases. Hooks are synchronous: a layer decides,
/// and the generated `ProxyHttp` impl does the waiting and writing (see [`Admission`]), so the
/// common path allocates nothing beyond what the inner proxy does. Every hook has a no-op
/// default; the generated impl calls them around the inner proxy as documented per hook.
pub trait ProxyPolicy: Send + Sync {
    /// Per-request state of this layer.
    type Ctx: Send + Sync;

    /// A fresh per-request state.
    fn new_ctx(&self) -> Self::Ctx;

    /// The optional hooks this policy acts in, read once per phase (it may depend on the
    /// configuration, e.g. no retries configured means no response inspection).
    fn hooks(&self) -> Hooks;

    /// Admission, called before the inner proxy's `request_filter`; anything but
    /// [`Admission::Continue`] is acted on before the inner proxy is asked.
    fn request_filter(&self, _session: &mut Session, _ctx: &mut Self::Ctx) -> Result<Admission> {
        Ok(Admission::Continue)
    }

    /// Called before every attempt to pick a peer (the first and each retry); `Some` is a wait
    /// before the inner proxy is asked (a retry's backoff).
    fn before_upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::Ctx,
    ) -> Result<Option<Duration>> {
        Ok(None)
    }

    /// Called with each peer the inner proxy picked ([`Hooks::select_peer`]); may adjust it
    /// (timeouts) or skip it.
    fn select_peer(
        &self,
        _session: &mut Session,
        _peer: &mut HttpPeer,
        _ctx: &mut Self::Ctx,
    ) -> Result<PeerChoice> {
        Ok(PeerChoice::Accept)
    }

    /// Called when the inner proxy has no (further) peer to offer ([`Hooks::select_peer`]); may
    /// replace its error (e.g. `503` when every candidate was skipped as open).
    fn no_peer(&self, e: Box<Error>, _ctx: &mut Self::Ctx) -> Box<Error> {
        e
    }

    /// Called after the inner proxy's `upstream_response_filter`
    /// ([`Hooks::upstream_response_filter`]); an `Err` aborts this attempt (Pingora then asks
    /// `error_while_proxy` whether to retry).
    fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Called after the inner proxy's `response_filter` ([`Hooks::response_filter`]), before
    /// the head goes downstream.
    fn response_filter(
        &self,
        _session: &mut Session,
        _response: &mut ResponseHeader,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Called before the inner proxy's `upstream_response_body_filter` for every body chunk.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Called after the inner proxy's `fail_to_connect`; may change the retry decision.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Self::Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        e
    }

    /// Called after the inner proxy's `error_while_proxy`; may change the retry decision.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Self::Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        e
    }

    /// Called first when the request failed for good, with the final error as the layers
    /// outside this one left it (a timeout layer outside marks a client's deadline so), e.g. to
    /// settle what an attempt's error left open.
    fn request_failed(&self, _e: &Error, _ctx: &mut Self::Ctx) {}

    /// Called next when the request failed for good: a layer that answers itself (e.g. `503`
    /// with `Retry-After` when every backend's breaker is open) returns the head to write (with
    /// no body, the connection not reused), and neither inner layers nor the inner proxy write
    /// another.
    fn respond_to_failure(&self, _e: &Error, _ctx: &mut Self::Ctx) -> Option<Box<ResponseHeader>> {
        None
    }

    /// Called before the inner proxy's `fail_to_proxy`: a returned error replaces the one the
    /// inner proxy answers for (e.g. a `504` once the deadline has passed).
    fn replace_final_error(
        &self,
        _session: &mut Session,
        _e: &Error,
        _ctx: &mut Self::Ctx,
    ) -> Option<Box<Error>> {
        None
    }
}
