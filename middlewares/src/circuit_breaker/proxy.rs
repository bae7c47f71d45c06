//! The Pingora host of [`CircuitBreaker`]: one breaker per upstream backend.
//!
//! `upstream_peer` takes a permit from the breaker of the backend the inner proxy picked (keyed
//! by its socket address, in the layer's shared registry); an open backend is skipped by asking
//! the inner proxy for another. When every candidate is open the client gets `503` with
//! `Retry-After` at once, and no backend is contacted. The attempt's outcome is recorded from
//! `fail_to_connect` / `error_while_proxy` (failures) or the response status (through the layer's
//! classifier).
//!
//! Only the upstream's failures move a breaker: an error whose source is the client (it went
//! away, sent a malformed body, pipelined garbage) releases the permit unrecorded, and so does
//! a permit still held when the request ends. A timed-out attempt is settled once its fate is
//! known: as a failure when the request goes on to another attempt or fails for good with an
//! upstream-side error, unrecorded when the final error is the client's (a timeout layer marks
//! the expiry of a deadline the client shortened with `x-request-timeout` so).

use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock};

use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::time::Instant;

use super::breaker::WeakBreaker;
use super::layer::Shared;
use super::{Breaker, Breakers, CircuitBreakerLayer, CircuitOpen, Outcome, Permit};
use crate::proxy_host::{PeerChoice, ProxyPolicy};
use crate::Rejection;

/// Per-request state of the circuit breaker in a proxy.
#[derive(Debug, Default)]
pub struct CircuitBreakerProxyCtx {
    /// The permit of the attempt in progress.
    permit: Option<Permit>,
    /// The permit of an attempt that timed out, settled once it is known whether the deadline
    /// was the client's (see `error_while_proxy`).
    timed_out: Option<Permit>,
    /// The last open breaker a candidate was skipped for.
    skipped: Option<CircuitOpen>,
    /// Every candidate was open: this layer answers the request.
    all_open: bool,
}

/// The breakers of inet backends by socket address, in front of the registry's text keys:
/// formatting an address and hashing it as text on every request was the breaker host's largest
/// cost (see `BENCHMARKS.md`); a lookup here costs a small fraction of that. Entries are weak,
/// so the registry's bound and eviction still decide which breakers exist; a dropped one is
/// looked up again by text.
#[derive(Default)]
pub(crate) struct PeerBreakers {
    map: RwLock<HashMap<std::net::SocketAddr, WeakBreaker, ahash::RandomState>>,
}

impl PeerBreakers {
    fn get(&self, breakers: &Breakers, peer: &HttpPeer) -> Breaker {
        let Some(&addr) = peer.address().as_inet() else {
            return breakers.get(&BackendKey::of(peer));
        };
        let cached = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .and_then(WeakBreaker::upgrade);
        if let Some(breaker) = cached {
            return breaker;
        }
        let breaker = breakers.get(&BackendKey::of(peer));
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        // Bounded like the registry: stale entries go when it fills up.
        if map.len() >= breakers.max_keys() {
            map.retain(|_, weak| weak.upgrade().is_some());
        }
        map.insert(addr, breaker.downgrade());
        breaker
    }
}

/// A backend's registry key (its socket address as text), written into a stack buffer.
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

impl fmt::Debug for PeerBreakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerBreakers").finish_non_exhaustive()
    }
}

impl CircuitBreakerProxyCtx {
    /// Settles a timed-out attempt whose request went on (a retry): the deadline was not the
    /// client's, so the backend hung.
    fn settle_timed_out(&mut self) {
        if let Some(permit) = self.timed_out.take() {
            permit.finish(Outcome::Failure);
        }
    }
}

/// Whether the client, not the upstream, is behind `e`: the client went away, sent something
/// malformed, or its own shortened deadline (`x-request-timeout`) passed. Such errors release
/// the permit unrecorded.
fn is_clients(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
}

fn status_of(e: &Error) -> Option<http::StatusCode> {
    match e.etype() {
        ErrorType::HTTPStatus(code) => http::StatusCode::from_u16(*code).ok(),
        _ => None,
    }
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    )
}

impl Shared {
    /// Settles the attempt that just failed with `e`: the client's errors count for nothing, a
    /// timeout waits for the final word on whose deadline it was, anything else is the
    /// upstream's failure.
    fn settle_failed_attempt(&self, e: &Error, ctx: &mut CircuitBreakerProxyCtx) {
        let Some(permit) = ctx.permit.take() else {
            return;
        };
        if is_clients(e) {
            drop(permit);
        } else if is_timeout(e) {
            ctx.timed_out = Some(permit);
        } else if let Some(status) = status_of(e) {
            // A status an outer layer turned into an error (a retry) before this layer saw the
            // head: classified as the status it is.
            permit.finish_with(Ok(status));
        } else {
            permit.finish_with(Err(()));
        }
    }
}

impl ProxyPolicy for CircuitBreakerLayer {
    type Ctx = CircuitBreakerProxyCtx;

    fn new_ctx(&self) -> CircuitBreakerProxyCtx {
        CircuitBreakerProxyCtx::default()
    }

    fn select_peer(
        &self,
        _session: &mut Session,
        peer: &mut HttpPeer,
        ctx: &mut CircuitBreakerProxyCtx,
    ) -> Result<PeerChoice> {
        // A permit left from an earlier attempt was settled by the failure hooks; drop any rest.
        ctx.permit = None;
        ctx.settle_timed_out();
        let breaker = self.shared.peers.get(&self.shared.breakers, peer);
        match breaker.try_acquire_with(Instant::now) {
            Ok(permit) => {
                ctx.permit = Some(permit);
                Ok(PeerChoice::Accept)
            }
            Err(open) => {
                tracing::debug!(
                    backend = %peer.address(),
                    state = %open.state(),
                    "circuit open, skipping backend"
                );
                ctx.skipped = Some(open);
                Ok(PeerChoice::Skip)
            }
        }
    }

    fn no_peer(&self, e: Box<Error>, ctx: &mut CircuitBreakerProxyCtx) -> Box<Error> {
        let Some(open) = &ctx.skipped else {
            return e;
        };
        tracing::debug!(
            retry_after_secs = open.retry_after_secs(),
            "every backend's circuit is open: answering 503"
        );
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
        self.shared.settle_failed_attempt(&e, ctx);
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
        self.shared.settle_failed_attempt(&e, ctx);
        e
    }

    fn request_failed(&self, e: &Error, ctx: &mut CircuitBreakerProxyCtx) {
        // The final error, as the outer layers left it: a timeout layer outside this one marks
        // the expiry of a deadline the client shortened as the client's.
        if let Some(permit) = ctx.timed_out.take() {
            if !is_clients(e) {
                permit.finish(Outcome::Failure);
            }
        }
    }

    fn respond_to_failure(
        &self,
        e: &Error,
        ctx: &mut CircuitBreakerProxyCtx,
    ) -> Option<Box<ResponseHeader>> {
        if !ctx.all_open || e.etype() != &ErrorType::HTTPStatus(503) {
            return None;
        }
        ctx.skipped.as_ref()?.to_response_head().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit_breaker::{CircuitBreakerLayer, State};

    fn peer(addr: &str) -> HttpPeer {
        HttpPeer::new(addr, false, String::new())
    }

    #[test]
    fn a_backend_gets_the_registry_breaker_of_its_address() {
        let layer = CircuitBreakerLayer::builder().build().expect("valid");
        let peers = PeerBreakers::default();
        let first = peers.get(layer.breakers(), &peer("127.0.0.1:9001"));
        assert_eq!(first.key(), "127.0.0.1:9001");
        // The cached path and the text path see one breaker.
        layer.handle().force_open("127.0.0.1:9001");
        let again = peers.get(layer.breakers(), &peer("127.0.0.1:9001"));
        assert_eq!(again.state(), State::ForcedOpen);
        assert_eq!(first.state(), State::ForcedOpen);
        let other = peers.get(layer.breakers(), &peer("127.0.0.1:9002"));
        assert_eq!(other.state(), State::Closed);
    }

    #[test]
    fn an_evicted_breaker_is_looked_up_again_not_resurrected() {
        let layer = CircuitBreakerLayer::builder()
            .max_keys(2) // the layer's own default breaker and one backend
            .build()
            .expect("valid");
        let peers = PeerBreakers::default();
        drop(peers.get(layer.breakers(), &peer("127.0.0.1:9001")));
        // Registry full: the unused breaker of 9001 is evicted for 9002.
        drop(peers.get(layer.breakers(), &peer("127.0.0.1:9002")));
        let keys = layer.handle().keys();
        assert!(keys.contains(&"127.0.0.1:9002".to_string()), "{keys:?}");
        assert!(!keys.contains(&"127.0.0.1:9001".to_string()), "{keys:?}");
        let back = peers.get(layer.breakers(), &peer("127.0.0.1:9001"));
        layer.handle().force_open("127.0.0.1:9001");
        assert_eq!(
            back.state(),
            State::ForcedOpen,
            "the cache returned a stale breaker"
        );
    }
}
