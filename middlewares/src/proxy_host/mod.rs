//! The Pingora host: every layer's service also implements Pingora's `ProxyHttp`.
//!
//! With the `pingora` feature, `ServiceBuilder::new().layer(a).layer(b).service(my_proxy)` is a
//! `ProxyHttp` that `pingora_proxy::http_proxy_service` accepts, and the layer values keep one
//! shared state for both hosts: a limiter used by an axum app and by a proxy counts both.
//!
//! Every layer's service is a [`Layered<P, S>`](crate::Layered): the layer value `P` next to the
//! inner proxy `S`. One generic `ProxyHttp` impl serves every `Layered<P, S>` whose `P`
//! implements [`ProxyPolicy`]: it forwards all of Pingora's methods to the inner proxy and calls
//! the policy at the few phases where a policy acts. Our four layers are such policies, and a
//! user writes a proxy-side layer the same way: implement [`ProxyPolicy`] for a value (usually
//! the layer type itself) and `Layered::wrap(policy, inner)` is a `ProxyHttp`
//! (`examples/request_id_policy.rs`).
//!
//! | layer | phases |
//! |---|---|
//! | rate limit | `request_filter`: 429 before any upstream work (queue mode waits there) |
//! | timeout | `request_filter` stamps the deadline; `before_upstream_peer` refuses an attempt past it; `select_peer` clamps connect/read/write timeouts to what is left; a response head completing past it is refused; the request and response body filters cut an upload or a body still streaming past it; failure hooks withdraw any retry past it; `fail_to_proxy` answers 504 |
//! | retry | `fail_to_connect`, `error_while_proxy`, `upstream_response_filter` (retryable status becomes a retryable error); `per_try_timeout` through [`AttemptTimeout`] in `select_peer`; backoff before the next `upstream_peer` |
//! | circuit breaker | a permit per backend in `upstream_peer` (an open backend is skipped by asking the inner proxy for another); outcome recorded from the failure hooks and the response status; a permit still held when the request ends is released unrecorded with the context |
//! | access control | `request_filter`: `403` (`400` for an unreadable path or host) on the canonical path and host before any upstream work; deny-by-address also at accept, through the server's connection filter |
//! | observability | `request_filter` opens the request span, and from then on the inner layers and the inner proxy run inside it ([`ProxyPolicy::span`]): each layer's decision is an event of that request; an attempt is timed from `select_peer` to the upstream's head or its failure; `logging` records the request |
//!
//! # The same layer in both hosts
//! One layer value configures both hosts and shares its state (limiter, budget, breakers)
//! between them. What each does, and where the hosts differ:
//!
//! | layer | tower host (`Service`) | proxy host (`ProxyPolicy`) | differs, and why |
//! |---|---|---|---|
//! | timeout | one deadline from `call` to the response head; `504` rendered by [`Elapsed`](crate::timeout::Elapsed); the body only with [`with_body_deadline`](crate::timeout::TimeoutLayer::with_body_deadline) | one deadline from `request_filter` across every attempt: each attempt's connect/read/write clamped to what is left, no attempt or retry past it, `504` from `fail_to_proxy`; the upload and the response body are always cut at it | **Body**: the proxy has no body type to change, so its deadline always covers the streaming body (the tower host needs the separate body layer, as the body type changes). **Precision**: the tower host fires a timer; Pingora offers only per-operation timeouts fixed when an attempt starts, so the proxy bounds each read and write by what was left then and checks the clock at each phase (a head or a chunk arriving late is refused, a silent upstream is cut when the clamped read gives up; an upstream trickling bytes is noticed at its next chunk). `x-request-timeout` is honoured alike |
//! | rate limit | admission in `call`, fail fast with `429` and the `RateLimit` headers; queue mode waits in the response future | admission in `request_filter`, before any upstream work, same answer and headers; queue mode waits there | **Order**: Pingora runs admission for every layer before peer selection, whatever the stack order, and retries restart at peer selection: a limiter never counts a retry in the proxy, while in a tower stack a limiter *inside* a retry layer is asked again on each attempt |
//! | retry | re-calls the inner service with the request replayed (body captured up to the replay limit); retryable statuses and errors; `per_try_timeout` is a timer per attempt up to its response head; budget and backoff | steers Pingora's own retry loop (the `retry` flag of the attempt's error); retryable statuses turned into errors before anything goes downstream; a failed connect is retried for any method; the body replay is Pingora's 64 KiB retry buffer; `per_try_timeout` clamps each attempt's connect/read/write and refuses a late head ([`AttemptTimeout`]); budget and backoff alike | **Never once a response byte went downstream, never for the client's own errors** (the proxy streams, the tower host has the whole response head before deciding). **per_try_timeout** in the proxy also bounds each read of that attempt's response body, since Pingora keeps one read timeout for head and body and no phase can change it after the head; the tower host's timer stops at the head. A connect failure is retried for any method only in the proxy: there nothing provably reached the upstream |
//! | circuit breaker | one breaker (or one per key) around the inner service; outcome from the response status or the error | one breaker per backend (by socket address), an open backend skipped for another, `503` + `Retry-After` when every candidate is open; outcome from the failure hooks and the upstream's status | **What counts, in both hosts**: only the upstream's failures. A deadline of this crate that cut the call off (tower: the timeout or per-try timer dropped the inner future; proxy: a timed-out attempt whose request went on or failed with an upstream-side error) counts as a failure; a client that went away (tower: the future dropped without a deadline; proxy: an error whose source is downstream) and a deadline the client shortened with `x-request-timeout` count for nothing. **Scope**: per backend in the proxy, since it knows the backends; per service or key in tower |
//! | access control | decides in `call` from the extensions' client address; the inner service is not called on a refusal | decides in `request_filter` from the session's client address | **Order** only, as for the rate limit: put it outermost so a refusal comes before any other layer's admission. Same rules, canonicaliser, counters and answer |
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

mod attempt;
mod forwarded;
mod host;
mod optional;

pub use attempt::AttemptTimeout;
#[cfg(feature = "timeout")]
pub(crate) use attempt::Clamped;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
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

/// A decision that needs I/O first (a shared store, an external check), resolved before the
/// request goes on. It owns what it needs: it cannot borrow the session.
pub type PendingAdmission = Pin<Box<dyn Future<Output = Result<Admission>> + Send + 'static>>;

/// What a layer decides when a request arrives.
pub enum Admission {
    /// Go on: the inner proxy's `request_filter` runs next.
    Continue,
    /// Wait this long, then go on (a rate limiter's queue).
    Wait(Duration),
    /// Answer with this head and no body; the request ends (the connection is not reused, as
    /// the request body may be unread).
    Respond(Box<ResponseHeader>),
    /// Decide once this future resolves (to any of the above). Only policies that need I/O pay
    /// for it: a synchronous decision allocates nothing.
    Pending(PendingAdmission),
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Continue => f.write_str("Continue"),
            Admission::Wait(wait) => f.debug_tuple("Wait").field(wait).finish(),
            Admission::Respond(head) => f.debug_tuple("Respond").field(&head.status).finish(),
            Admission::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Whether any part of the response (head or body) went to the client. From then on another
/// attempt would splice a second upstream answer onto the first: no policy may retry.
pub fn response_started(session: &Session) -> bool {
    session.response_written().is_some() || session.body_bytes_sent() > 0
}

/// How one attempt's peer selection goes, from [`ProxyPolicy::before_upstream_peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStep {
    /// Ask the inner proxy, then show its peer to [`ProxyPolicy::select_peer`].
    Select,
    /// Wait this long first (a retry's backoff), then as [`Select`](Self::Select).
    Wait(Duration),
    /// Hand the inner proxy's answer through untouched: this policy does not look at the peer
    /// of this attempt (`select_peer` is not called).
    PassThrough,
}

/// Whether `e` says to retry, once Pingora's "only on a reused connection" is settled with
/// `client_reused`. Reading `e.retry()` directly panics on an undecided error.
pub fn retry_decided(e: &Error, client_reused: bool) -> bool {
    let mut retry = e.retry;
    retry.decide_reuse(client_reused);
    matches!(retry, pingora_error::RetryType::Decided(true))
}

/// How many times one request may ask the inner proxy for another peer before giving up.
pub const MAX_PEER_SKIPS: usize = 32;

/// A layer's policy mapped onto Pingora's proxy phases: implement it and
/// [`Layered<Self, S>`](crate::Layered) is a `ProxyHttp` around any `ProxyHttp` `S`.
///
/// Hooks are synchronous: a policy decides, and the generic impl does the waiting and writing
/// (see [`Admission`]), so a phase a policy leaves alone passes the inner proxy's future through
/// without an allocation. Every hook has a no-op default, and every hook is always called (there
/// is nothing to switch on).
///
/// **When each hook runs**, for a stack `outer(inner(proxy))`: on the way in (admission, peer
/// selection, the upstream request and its body chunks, response heads and body chunks,
/// logging) the outer policy first, then the inner ones, then the proxy's own method; on a
/// failure (`fail_to_connect`, `error_while_proxy`) the proxy's method first and the outer
/// policy last, so the outermost layer has the final word on a retry; when the request failed
/// for good (`fail_to_proxy`) the outer policy first, each seeing the error as the layers
/// outside it left it.
///
/// Pingora fixes the order of phases (admission, then peer selection, then the exchange),
/// whatever the order of the layers; see the module docs.
pub trait ProxyPolicy: Send + Sync {
    /// Per-request state of this layer.
    type Ctx: Send + Sync;

    /// A fresh per-request state.
    fn new_ctx(&self) -> Self::Ctx;

    /// Admission, before the inner proxy's `request_filter`. [`Admission::Continue`] goes on at
    /// once; anything else is acted on before the inner proxy is asked. `Err` fails the request
    /// (Pingora answers with the error's status through `fail_to_proxy`).
    fn request_filter(&self, _session: &mut Session, _ctx: &mut Self::Ctx) -> Result<Admission> {
        Ok(Admission::Continue)
    }

    /// Before every attempt to pick a peer (the first and each retry): how this attempt's peer
    /// selection goes (see [`PeerStep`]). The default, [`PeerStep::Select`], always calls
    /// [`select_peer`](Self::select_peer); a policy that does not look at peers returns
    /// [`PeerStep::PassThrough`] and saves an allocation per attempt. `Err` fails the request
    /// without an attempt (a deadline that passed).
    fn before_upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::Ctx,
    ) -> Result<PeerStep> {
        Ok(PeerStep::Select)
    }

    /// With each peer the inner proxy picked. May adjust it (timeouts);
    /// [`PeerChoice::Skip`] asks the inner proxy for another (up to [`MAX_PEER_SKIPS`] times);
    /// `Err` fails the attempt.
    fn select_peer(
        &self,
        _session: &mut Session,
        _peer: &mut HttpPeer,
        _ctx: &mut Self::Ctx,
    ) -> Result<PeerChoice> {
        Ok(PeerChoice::Accept)
    }

    /// When the inner proxy has no (further) peer to offer; returns the error the request fails
    /// with (e.g. `503` when every candidate was skipped as open).
    fn no_peer(&self, e: Box<Error>, _ctx: &mut Self::Ctx) -> Box<Error> {
        e
    }

    /// Before the inner proxy's `connected_to_upstream`, once the attempt has its connection
    /// (`reused` from the pool or new): the peer of the attempt, without wrapping peer
    /// selection. `Err` fails the attempt.
    fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Before the inner proxy's `upstream_request_filter`: may change the request head sent to
    /// the upstream (add a request id, strip a header). `Err` fails the attempt.
    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Before the inner proxy's `request_body_filter`, for every chunk of the request body as it
    /// goes to the upstream. `Err` aborts the exchange (e.g. an upload that outlives the
    /// deadline).
    fn request_body_filter(&self, _session: &mut Session, _ctx: &mut Self::Ctx) -> Result<()> {
        Ok(())
    }

    /// Before the inner proxy's `upstream_response_filter`, with the upstream's final response
    /// head, before anything of it goes downstream (interim heads, `100` and `103`, go to the
    /// inner proxy only: no policy takes one for the answer). `Err` aborts this attempt (Pingora then asks
    /// `error_while_proxy` whether to retry; a retryable status becomes a retry this way).
    fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Before the inner proxy's `response_filter`, with the head about to go downstream (the
    /// upstream's or an error answer's). `Err` fails the request.
    fn response_filter(
        &self,
        _session: &mut Session,
        _response: &mut ResponseHeader,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// Before the inner proxy's `upstream_response_body_filter`, for every body chunk. `Err`
    /// cuts the response (the client sees the connection close).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::Ctx,
    ) -> Result<()> {
        Ok(())
    }

    /// After the inner proxy's `fail_to_connect` (nothing reached the upstream); returns the
    /// error with the retry decision this layer wants (`e.set_retry`).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Self::Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        e
    }

    /// After the inner proxy's `error_while_proxy` (the exchange failed); returns the error with
    /// the retry decision this layer wants. A policy should only narrow the inner decision: the
    /// inner proxy may know why a retry is unsafe.
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

    /// First when the request failed for good, with the final error as the layers outside this
    /// one left it (a timeout layer outside marks a client's deadline so), e.g. to settle what
    /// an attempt's error left open.
    fn request_failed(&self, _e: &Error, _ctx: &mut Self::Ctx) {}

    /// Next when the request failed for good: a layer that answers itself (e.g. `503` with
    /// `Retry-After` when every backend's breaker is open) returns the head to write (with no
    /// body, the connection not reused), and neither inner layers nor the inner proxy write
    /// another.
    fn respond_to_failure(&self, _e: &Error, _ctx: &mut Self::Ctx) -> Option<Box<ResponseHeader>> {
        None
    }

    /// Last before the inner proxy's `fail_to_proxy`: a returned error replaces the one the
    /// inner proxy answers for (e.g. a `504` once the deadline has passed).
    fn replace_final_error(
        &self,
        _session: &mut Session,
        _e: &Error,
        _ctx: &mut Self::Ctx,
    ) -> Option<Box<Error>> {
        None
    }

    /// The span the inner layers and the inner proxy run in for this request (an observability
    /// layer's request span), so their events land inside it. `None` (the default), or a
    /// disabled span, costs nothing: phases are neither entered nor wrapped.
    ///
    /// Asked after this policy's own hook of the phase (so a span opened in its
    /// `request_filter` covers that phase already). While it is enabled the span is entered
    /// around every call into the inner proxy at `request_filter`, `upstream_peer`,
    /// `connected_to_upstream`, `upstream_request_filter`, `upstream_response_filter`,
    /// `response_filter`, `fail_to_connect`, `error_while_proxy`, `fail_to_proxy` and
    /// `logging`, and the future of each async one is polled inside it (one more boxed future
    /// per phase); the body filters only enter it around the call (per chunk, no future
    /// wrapped). This policy's own hooks run outside it.
    fn span<'a>(&self, _ctx: &'a Self::Ctx) -> Option<&'a tracing::Span> {
        None
    }

    /// Before the inner proxy's `logging`, once per request however it ended (`e` is the error
    /// it failed with, if any).
    fn logging(&self, _session: &mut Session, _e: Option<&Error>, _ctx: &mut Self::Ctx) {}
}
