//! The Pingora host of [`Timeout`]: one deadline per request across every attempt.
//!
//! This is the one deadline mechanism of the proxy host: `pingora_tower`'s `ProxyBuilder`
//! installs this policy innermost for its `request_timeout`, and a timeout layer stacked on top
//! is a second policy of the same kind (each clamps, so the shorter deadline wins).
//!
//! `request_filter` stamps the deadline (honouring `x-request-timeout` when enabled); each
//! attempt's peer gets its connect, read and write timeouts clamped to what is left; once the
//! deadline has passed the request fails with the layer's status (`504`), whether the deadline
//! was noticed before an attempt, by a clamped timeout firing during one, or by a response head
//! completing after it. An upload or a response body still streaming at the deadline is cut (a
//! body whose head already went out ends with the connection closed). No attempt is retried
//! past it, and no new attempt starts past it. When the client shortened the deadline (`x-request-timeout`), its expiry is marked
//! as the client's (`ErrorSource::Downstream`), so a circuit breaker does not count it against
//! the upstream.

use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tokio::time::Instant;

use super::TimeoutLayer;
use crate::proxy_host::{Admission, Clamped, PeerChoice, PeerStep, ProxyPolicy};

/// Per-request state of the timeout layer in a proxy.
#[derive(Debug, Default)]
pub struct TimeoutProxyCtx {
    deadline: Option<Instant>,
    /// The client shortened the deadline (`x-request-timeout`): its expiry is the client's
    /// doing, not the upstream's failure.
    client_deadline: bool,
    /// Which of the attempt's timeouts were shortened to the deadline: a timeout of that kind
    /// from the attempt means the deadline passed (a longer one is the peer's own, and the
    /// request may still fail over).
    clamped: Clamped,
}

impl TimeoutProxyCtx {
    /// When this request must be done by, once `request_filter` stamped it. A layer wrapping
    /// this one reads it through its `LayerCtx` (e.g. to pass the time left on to the upstream);
    /// only this policy moves it.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

impl TimeoutLayer {
    fn deadline_error(&self, ctx: &TimeoutProxyCtx) -> Box<Error> {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(self.response_status().as_u16()),
            "request deadline passed",
        );
        attribute(&mut e, ctx);
        e
    }
}

/// Marks the error of a passed deadline the client asked for as the client's, so a circuit
/// breaker (inside or outside this layer) does not count it against the upstream.
fn attribute(e: &mut Error, ctx: &TimeoutProxyCtx) {
    if ctx.client_deadline {
        e.as_down();
    }
}

/// Whether `e` (an attempt's error) is this request's deadline passing: a clamped timeout fired,
/// or the deadline is over.
fn deadline_passed(e: &Error, ctx: &TimeoutProxyCtx) -> bool {
    let Some(deadline) = ctx.deadline else {
        return false;
    };
    Instant::now() >= deadline || ctx.clamped.timed_out(e)
}

/// Shortens the attempt's connect, read and write timeouts to `left`.
fn clamp_to_deadline(peer: &mut HttpPeer, left: Duration, ctx: &mut TimeoutProxyCtx) {
    ctx.clamped = Clamped::apply(peer, left);
}

impl ProxyPolicy for TimeoutLayer {
    type Ctx = TimeoutProxyCtx;

    fn new_ctx(&self) -> TimeoutProxyCtx {
        TimeoutProxyCtx::default()
    }

    fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut TimeoutProxyCtx,
    ) -> Result<Admission> {
        let (deadline, elapsed) =
            self.request_deadline(&session.req_header().headers, Instant::now());
        ctx.deadline = Some(deadline);
        ctx.client_deadline = elapsed.is_client_deadline();
        Ok(Admission::Continue)
    }

    fn before_upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut TimeoutProxyCtx,
    ) -> Result<PeerStep> {
        match ctx.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(self.deadline_error(ctx)),
            _ => Ok(PeerStep::Select),
        }
    }

    fn select_peer(
        &self,
        _session: &mut Session,
        peer: &mut HttpPeer,
        ctx: &mut TimeoutProxyCtx,
    ) -> Result<PeerChoice> {
        let Some(deadline) = ctx.deadline else {
            return Ok(PeerChoice::Accept);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.deadline_error(ctx));
        }
        clamp_to_deadline(peer, left, ctx);
        Ok(PeerChoice::Accept)
    }

    fn request_body_filter(&self, _session: &mut Session, ctx: &mut TimeoutProxyCtx) -> Result<()> {
        // An upload still going at the deadline is aborted.
        match ctx.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(self.deadline_error(ctx)),
            _ => Ok(()),
        }
    }

    fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _response: &mut ResponseHeader,
        ctx: &mut TimeoutProxyCtx,
    ) -> Result<()> {
        // A head that completes after the deadline (each read was clamped, not their sum) is
        // not forwarded late: the request fails with the deadline's status instead.
        match ctx.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(self.deadline_error(ctx)),
            _ => Ok(()),
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        ctx: &mut TimeoutProxyCtx,
    ) -> Result<()> {
        // A body still streaming at the deadline is cut (the head went out already, so the
        // client sees the connection close rather than a `504`).
        match ctx.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(self.deadline_error(ctx)),
            _ => Ok(()),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut TimeoutProxyCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if deadline_passed(&e, ctx) {
            attribute(&mut e, ctx);
            e.set_retry(false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        _session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut TimeoutProxyCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        if deadline_passed(&e, ctx) {
            attribute(&mut e, ctx);
            e.set_retry(false);
        }
        e
    }

    fn replace_final_error(
        &self,
        _session: &mut Session,
        e: &Error,
        ctx: &mut TimeoutProxyCtx,
    ) -> Option<Box<Error>> {
        if !deadline_passed(e, ctx) {
            return None;
        }
        tracing::debug!(
            status = self.response_status().as_u16(),
            client_deadline = ctx.client_deadline,
            error = %e,
            "request deadline passed"
        );
        Some(self.deadline_error(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> HttpPeer {
        let mut peer = HttpPeer::new("127.0.0.1:9", false, String::new());
        peer.options.total_connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(60));
        peer.options.write_timeout = Some(Duration::from_secs(60));
        peer
    }

    /// A connect timeout of the peer's own (5 s) well before a 10 s deadline is not the
    /// deadline: the request may still fail over. Only the read and write timeouts were
    /// shortened to the deadline.
    #[tokio::test(start_paused = true)]
    async fn only_a_timeout_the_deadline_shortened_is_the_deadline() {
        let ctx = &mut TimeoutProxyCtx {
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            ..TimeoutProxyCtx::default()
        };
        let mut peer = peer();
        clamp_to_deadline(&mut peer, Duration::from_secs(10), ctx);
        assert_eq!(
            peer.options.total_connection_timeout,
            Some(Duration::from_secs(5))
        );
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(5)).await;
        let connect = Error::explain(ErrorType::ConnectTimedout, "x");
        assert!(!deadline_passed(&connect, ctx));
        let read = Error::explain(ErrorType::ReadTimedout, "x");
        assert!(deadline_passed(&read, ctx));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(deadline_passed(&connect, ctx));
    }
}
