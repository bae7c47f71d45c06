//! The Pingora host of [`Timeout`]: one deadline per request across every attempt.
//!
//! `request_filter` stamps the deadline (honouring `x-request-timeout` when enabled); each
//! attempt's peer gets its connect, read and write timeouts clamped to what is left; once the
//! deadline has passed the request fails with the layer's status (`504`), whether the deadline
//! was noticed before an attempt or by a clamped timeout firing during one.

use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::Session;
use tokio::time::Instant;

use super::{Timeout, TimeoutLayer};
use crate::proxy_host::{Admission, Hooks, PeerChoice, ProxyPolicy};

impl_proxy_http!(Timeout, TimeoutLayer, TimeoutProxyCtx, |this| &this.layer);

/// Per-request state of the timeout layer in a proxy.
#[derive(Debug, Default)]
pub struct TimeoutProxyCtx {
    deadline: Option<Instant>,
    /// Whether an attempt's timeouts were shortened to the deadline, so a timeout error from
    /// that attempt means the deadline passed.
    clamped: bool,
}

impl TimeoutLayer {
    fn deadline_error(&self) -> Box<Error> {
        Error::explain(
            ErrorType::HTTPStatus(self.response_status().as_u16()),
            "request deadline passed",
        )
    }
}

fn clamp(timeout: &mut Option<Duration>, left: Duration) -> bool {
    match timeout {
        Some(t) if *t <= left => false,
        _ => {
            *timeout = Some(left);
            true
        }
    }
}

impl ProxyPolicy for TimeoutLayer {
    type Ctx = TimeoutProxyCtx;

    fn new_ctx(&self) -> TimeoutProxyCtx {
        TimeoutProxyCtx::default()
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            select_peer: true,
            ..Hooks::default()
        }
    }

    fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut TimeoutProxyCtx,
    ) -> Result<Admission> {
        ctx.deadline = Some(self.deadline_for(&session.req_header().headers, Instant::now()));
        Ok(Admission::Continue)
    }

    fn before_upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut TimeoutProxyCtx,
    ) -> Result<Option<Duration>> {
        match ctx.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(self.deadline_error()),
            _ => Ok(None),
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
            return Err(self.deadline_error());
        }
        let options = &mut peer.options;
        let mut clamped = clamp(&mut options.total_connection_timeout, left);
        clamped |= clamp(&mut options.read_timeout, left);
        clamped |= clamp(&mut options.write_timeout, left);
        ctx.clamped = clamped;
        Ok(PeerChoice::Accept)
    }

    fn replace_final_error(
        &self,
        _session: &mut Session,
        e: &Error,
        ctx: &mut TimeoutProxyCtx,
    ) -> Option<Box<Error>> {
        let deadline = ctx.deadline?;
        let timed_out = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let passed = Instant::now() >= deadline || (timed_out && ctx.clamped);
        passed.then(|| self.deadline_error())
    }
}
