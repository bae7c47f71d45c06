//! The Pingora host of [`RateLimit`]: admission in `request_filter`, before any upstream work.
//!
//! The key comes from the same [`RateLimitLayer::key_for_peer`] the tower host uses, with the
//! client address taken from the Pingora session; a rejected request is answered `429` with
//! `Retry-After` and the `RateLimit` headers, and no upstream is contacted. In queue mode the
//! request waits for its slot inside `request_filter`.

use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::{Decision, KeyValue, Quota, RateLimitLayer};
use crate::proxy_host::{Admission, PeerStep, ProxyPolicy};
use crate::{Rejection, RequestInfo};

/// Per-request state of the rate limiter in a proxy: the admitted request's quota, for the
/// `RateLimit` response headers when they are exposed.
#[derive(Debug, Default)]
pub struct RateLimitProxyCtx {
    quota: Option<Quota>,
}

impl ProxyPolicy for RateLimitLayer {
    type Ctx = RateLimitProxyCtx;

    fn new_ctx(&self) -> RateLimitProxyCtx {
        RateLimitProxyCtx::default()
    }

    fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RateLimitProxyCtx,
    ) -> Result<Admission> {
        let decision = if self.is_global() {
            // Same fast path as the tower host: no request view, no client address.
            self.check_now(&KeyValue::Global)
        } else {
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let info = RequestInfo::from_parts(session.req_header());
            match self.key_for_peer(&info, peer) {
                Some(key) => self.check_now(&key),
                None => return Ok(Admission::Continue),
            }
        };
        match decision {
            Decision::Allow(quota) => {
                ctx.quota = Some(quota);
                Ok(Admission::Continue)
            }
            Decision::Delay { delay, quota } => {
                ctx.quota = Some(quota);
                Ok(Admission::Wait(delay))
            }
            Decision::Reject(limited) => Ok(Admission::Respond(limited.to_response_head()?)),
        }
    }

    fn before_upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RateLimitProxyCtx,
    ) -> Result<PeerStep> {
        Ok(PeerStep::PassThrough)
    }

    fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RateLimitProxyCtx,
    ) -> Result<()> {
        if let Some(quota) = ctx.quota.filter(|_| self.exposes_headers()) {
            for (name, value) in self.quota_headers(&quota) {
                response.insert_header(name, value)?;
            }
        }
        Ok(())
    }
}
