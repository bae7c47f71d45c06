//! The Pingora host of [`CircuitBreaker`]: one breaker per upstream backend.
//!
//! `upstream_peer` takes a permit from the breaker of the backend the inner proxy picked (keyed
//! by its socket address, in the layer's shared registry); an open backend is skipped by asking
//! the inner proxy for another. When every candidate is open the client gets `503` with
//! `Retry-After` at once, and no backend is contacted. The attempt's outcome is recorded from
//! `fail_to_connect` / `error_while_proxy` (failures) or the response status (through the layer's
//! classifier); a permit still held when the request ends (the client went away) is released
//! unrecorded when the request context is dropped.

use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::time::Instant;

use super::layer::Shared;
use super::{CircuitBreaker, CircuitOpen, Outcome, Permit};
use crate::proxy_host::{Hooks, PeerChoice, ProxyPolicy};

impl_proxy_http!(CircuitBreaker, Shared, CircuitBreakerProxyCtx, |this| &this
    .shared);

/// Per-request state of the circuit breaker in a proxy.
#[derive(Debug, Default)]
pub struct CircuitBreakerProxyCtx {
    /// The permit of the attempt in progress.
    permit: Option<Permit>,
    /// The last open breaker a candidate was skipped for.
    skipped: Option<CircuitOpen>,
    /// Every candidate was open: this layer answers the request.
    all_open: bool,
}

/// A backend's registry key (its socket address as text), written into a stack buffer: this
/// runs for every proxied request, and a `String` would allocate each time.
struct BackendKey {
    buf: [u8; 128],
    len: usize,
}

impl BackendKey {
    fn of(peer: &HttpPeer) -> Self {
        use std::io::Write;
        let mut key = BackendKey {
            buf: [0; 128],
            len: 0,
        };
        let mut cursor = std::io::Cursor::new(&mut key.buf[..]);
        // An address longer than the buffer (a long Unix socket path) is truncated, which
        // only makes two such backends share a breaker.
        let _ = write!(cursor, "{}", peer.address());
        key.len = usize::try_from(cursor.position()).unwrap_or(0);
        key
    }
}

impl std::ops::Deref for BackendKey {
    type Target = str;

    fn deref(&self) -> &str {
        // Display output is UTF-8; a cut inside a character falls back to the valid prefix.
        match std::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or_default(),
        }
    }
}

impl CircuitBreakerProxyCtx {
    fn settle(&mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            permit.finish(outcome);
        }
    }
}

impl ProxyPolicy for Shared {
    type Ctx = CircuitBreakerProxyCtx;

    fn new_ctx(&self) -> CircuitBreakerProxyCtx {
        CircuitBreakerProxyCtx::default()
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            select_peer: true,
            upstream_response_filter: true,
            ..Hooks::default()
        }
    }

    fn select_peer(
        &self,
        _session: &mut Session,
        peer: &mut HttpPeer,
        ctx: &mut CircuitBreakerProxyCtx,
    ) -> Result<PeerChoice> {
        // A permit left from an earlier attempt was settled by the failure hooks; drop any rest.
        ctx.permit = None;
        let breaker = self.breakers.get(&BackendKey::of(peer));
        match breaker.try_acquire_with(Instant::now) {
            Ok(permit) => {
                ctx.permit = Some(permit);
                Ok(PeerChoice::Accept)
            }
            Err(open) => {
                tracing::debug!(backend = %peer.address(), "circuit open, skipping backend");
                ctx.skipped = Some(open);
                Ok(PeerChoice::Skip)
            }
        }
    }

    fn no_peer(&self, e: Box<Error>, ctx: &mut CircuitBreakerProxyCtx) -> Box<Error> {
        if ctx.skipped.is_none() {
            return e;
        }
        ctx.all_open = true;
        let mut e = Error::explain(
            ErrorType::HTTPStatus(503),
            "every backend's circuit is open",
        );
        e.set_retry(false);
        e
    }

    fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut CircuitBreakerProxyCtx,
    ) -> Result<()> {
        if let Some(permit) = ctx.permit.take() {
            permit.finish_with(Ok(response.status));
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut CircuitBreakerProxyCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.settle(self.breakers.classify(Err(())));
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut CircuitBreakerProxyCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        // Already settled when the error is a status another layer turned into a retry.
        ctx.settle(self.breakers.classify(Err(())));
        e
    }

    fn respond_to_failure(
        &self,
        e: &Error,
        ctx: &mut CircuitBreakerProxyCtx,
    ) -> Option<Box<ResponseHeader>> {
        if !ctx.all_open || e.etype() != &ErrorType::HTTPStatus(503) {
            return None;
        }
        let open = ctx.skipped.as_ref()?;
        let headers = open.headers();
        let mut response = ResponseHeader::build(open.status(), Some(headers.len() + 1)).ok()?;
        for (name, value) in &headers {
            response.insert_header(name.clone(), value.clone()).ok()?;
        }
        response
            .insert_header(http::header::CONTENT_LENGTH, 0)
            .ok()?;
        Some(Box::new(response))
    }
}
