//! The Pingora host of [`Retry`]: Pingora's own retry loop, steered by the same policy.
//!
//! Pingora retries an attempt when the error it ended with says so (`Error::retry`) and then
//! asks `upstream_peer` again. This host decides that flag:
//! - a failed connect (nothing reached the upstream) is retried for any method;
//! - a retryable status (`502`/`503`/`504` by default) is turned into a retryable error in
//!   `upstream_response_filter`, before anything is sent downstream, for retryable requests only
//!   (idempotent methods, or `Idempotency-Key` when enabled);
//! - an error mid-exchange is retried only when the inner proxy would retry it too, the request
//!   is retryable and its body still held in full by Pingora (its retry buffer keeps 64 KiB),
//!   no byte of the response went downstream yet (a retry then would splice two upstream
//!   answers into one), and the error is not the client's (a client that went away costs the
//!   upstream at most the attempt in flight). So a non-idempotent request is never sent twice
//!   once any byte of it reached an upstream;
//! - every retry needs retries left and a withdrawal from the shared budget; the backoff (or the
//!   server's `Retry-After`) is waited out before the next peer is picked.
//!
//! **`per_try_timeout`** limits each attempt's time to the upstream's response head with
//! [`AttemptTimeout`]: the attempt's connect, read and write timeouts are clamped to it, and a
//! head that completes later is refused before it goes downstream. An attempt it cut is this
//! layer's own failure, retried like a retryable status (this layer may widen the inner
//! proxy's "no" here, as after a failed connect) when the request is retryable, its body is
//! still held in full and nothing went downstream; the last one fails as an upstream read
//! timeout (`504`). Unlike the tower host, where the timer stops at the response head, Pingora
//! keeps the attempt's read timeout for the body: a body read that waits longer than
//! `per_try_timeout` is cut too (see [`AttemptTimeout`] for exactly what is bounded).

use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::time::Instant;

use super::layer::Shared;
use super::ResponseClass;
use super::RetryLayer;
use crate::proxy_host::{
    response_started, retry_decided, Admission, AttemptTimeout, PeerChoice, PeerStep, ProxyPolicy,
};

/// Per-request state of the retry layer in a proxy.
#[derive(Debug, Default)]
pub struct RetryProxyCtx {
    /// Retries granted so far.
    retries: u32,
    /// Whether the request may be retried after bytes of it reached an upstream.
    retryable_request: bool,
    /// The wait before the next attempt.
    delay: Option<Duration>,
    /// This layer turned the last response into an error to retry it.
    status_retry: bool,
    /// The current attempt's `per_try_timeout`.
    attempt: AttemptTimeout,
}

impl Shared {
    /// [`Shared::grant_retry`] for this request, planning the delay before the next attempt.
    fn grant_proxy_retry(&self, ctx: &mut RetryProxyCtx, retry_after: Option<Duration>) -> bool {
        let now = Instant::now();
        let Some(at) = self.grant_retry(ctx.retries, retry_after, now) else {
            return false;
        };
        ctx.delay = Some(at.saturating_duration_since(now));
        ctx.retries += 1;
        true
    }
}

impl ProxyPolicy for RetryLayer {
    type Ctx = RetryProxyCtx;

    fn new_ctx(&self) -> RetryProxyCtx {
        RetryProxyCtx::default()
    }

    fn request_filter(&self, session: &mut Session, ctx: &mut RetryProxyCtx) -> Result<Admission> {
        // Like the tower host: no retries configured, no budget bookkeeping. (Unlike the tower
        // host, every request deposits otherwise: in a proxy any method may be retried after a
        // failed connect, so every request can spend from the budget.)
        if !self.shared.policy.has_retries_left(0) {
            return Ok(Admission::Continue);
        }
        let head = session.req_header();
        ctx.retryable_request = self
            .shared
            .policy
            .is_retryable_request(&head.method, &head.headers);
        self.shared.budget.deposit();
        Ok(Admission::Continue)
    }

    fn before_upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RetryProxyCtx,
    ) -> Result<PeerStep> {
        // The peer is looked at only to time the attempt (`per_try_timeout`).
        Ok(match ctx.delay.take().filter(|delay| !delay.is_zero()) {
            Some(delay) => PeerStep::Wait(delay),
            None if self.shared.policy.per_try_timeout.is_some() => PeerStep::Select,
            None => PeerStep::PassThrough,
        })
    }

    fn select_peer(
        &self,
        _session: &mut Session,
        peer: &mut HttpPeer,
        ctx: &mut RetryProxyCtx,
    ) -> Result<PeerChoice> {
        if let Some(limit) = self.shared.policy.per_try_timeout {
            ctx.attempt.start(peer, limit);
        }
        Ok(PeerChoice::Accept)
    }

    fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RetryProxyCtx,
    ) -> Result<()> {
        // A late head is this attempt's timeout, decided in `error_while_proxy`.
        ctx.attempt.head_arrived()?;
        if !ctx.retryable_request || session.as_ref().retry_buffer_truncated() {
            return Ok(());
        }
        let ResponseClass::Retryable { retry_after } = self
            .shared
            .policy
            .classify_response(response.status, &response.headers)
        else {
            return Ok(());
        };
        if !self.shared.grant_proxy_retry(ctx, retry_after) {
            return Ok(());
        }
        tracing::debug!(
            status = response.status.as_u16(),
            "retryable status from the upstream: the attempt is retried"
        );
        ctx.status_retry = true;
        let mut e = Error::explain(
            ErrorType::HTTPStatus(response.status.as_u16()),
            "retryable upstream status",
        );
        e.set_retry(true);
        Err(e)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RetryProxyCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the upstream: safe to retry whatever the method, and one of the two
        // places this layer may retry what the inner proxy would not (a single backend is
        // retried); the other is its own per-try timeout.
        let retry = self.shared.grant_proxy_retry(ctx, None);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RetryProxyCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if std::mem::take(&mut ctx.status_retry) {
            // Our own retryable status, already granted in `upstream_response_filter`, before
            // anything of the response went downstream.
            e.set_retry(true);
            return e;
        }
        // Our own per-try timeout may be retried whatever the inner proxy said (it does not know
        // this limit); otherwise only narrowed, never widened: the inner proxy's "no" stands
        // (it may know why a retry is unsafe), and so does every reason of ours.
        let own_timeout = ctx.attempt.fired(&e);
        if !(retry_decided(&e, client_reused) || own_timeout) {
            e.set_retry(false);
            return e;
        }
        let refused = if !ctx.retryable_request {
            Some("the request is not retryable")
        } else if e.esource() == &ErrorSource::Downstream {
            Some("the error is the client's")
        } else if response_started(session) {
            Some("the response already went downstream")
        } else if session.as_ref().retry_buffer_truncated() {
            Some("the request body outgrew the retry buffer")
        } else {
            None
        };
        if let Some(reason) = refused {
            tracing::debug!(reason, error = %e, "retry refused");
        }
        // The budget and the retries left are checked last, and say why they refuse.
        let retry = refused.is_none() && self.shared.grant_proxy_retry(ctx, None);
        e.set_retry(retry);
        e
    }
}
