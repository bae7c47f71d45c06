//! The Pingora host of [`RateLimit`]: admission in `request_filter`, before any upstream work.
//!
//! The key comes from the same [`RateLimitLayer::key_for_peer`] the tower host uses, with the
//! client address taken from the Pingora session; a rejected request is answered `429` with
//! `Retry-After` and the `RateLimit` headers, and no upstream is contacted. In queue mode the
//! request waits for its slot inside `request_filter`.

use std::time::Duration;

use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

#[cfg(feature = "redis")]
use std::sync::{Arc, Mutex, PoisonError};

#[cfg(feature = "redis")]
use super::layer::Checked;
use super::{Decision, KeyValue, Quota, RateLimitLayer, RATELIMIT, RATELIMIT_POLICY};
use crate::proxy_host::{Admission, PeerStep, ProxyPolicy};
use crate::{Rejection, RequestInfo};

/// Per-request state of the rate limiter in a proxy: the admitted request's quota, for the
/// `RateLimit` response headers when they are exposed.
#[derive(Debug, Default)]
pub struct RateLimitProxyCtx {
    quota: Option<Quota>,
    /// The quota a decision that waited for Redis left, when headers are exposed (the pending
    /// decision owns what it needs, so it cannot write `quota`).
    #[cfg(feature = "redis")]
    decided: Option<Arc<Mutex<Option<Quota>>>>,
}

impl RateLimitProxyCtx {
    fn quota(&self) -> Option<Quota> {
        #[cfg(feature = "redis")]
        if let Some(slot) = &self.decided {
            return *slot.lock().unwrap_or_else(PoisonError::into_inner);
        }
        self.quota
    }
}

/// The configured limit, for the rejection event (never the key: it may be a client address).
#[derive(Debug, Clone, Copy)]
struct Limit {
    limit: u32,
    period: Duration,
}

impl RateLimitLayer {
    fn limit_of(&self) -> Limit {
        Limit {
            limit: self.limit(),
            period: self.period(),
        }
    }
}

/// Carries out `decision` in a proxy: `quota` receives an admitted request's quota.
fn admission(decision: Decision, quota: &mut Option<Quota>, limit: Limit) -> Result<Admission> {
    match decision {
        Decision::Allow(q) => {
            *quota = Some(q);
            Ok(Admission::Continue)
        }
        Decision::Delay { delay, quota: q } => {
            *quota = Some(q);
            Ok(Admission::Wait(delay))
        }
        Decision::Reject(limited) => {
            // Inside the request's span when an observability layer runs outside this one.
            tracing::debug!(
                limit = limit.limit,
                period_secs = limit.period.as_secs_f64(),
                retry_after_secs = limited.retry_after_secs(),
                "rate limit: request rejected with 429"
            );
            Ok(Admission::Respond(limited.to_response_head()?))
        }
    }
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
        #[cfg(feature = "redis")]
        if self.has_remote() {
            return self.request_filter_remote(session, ctx);
        }
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
        admission(decision, &mut ctx.quota, self.limit_of())
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
        if let Some(quota) = ctx.quota().filter(|_| self.exposes_headers()) {
            let (policy, quota) = self.quota_headers(&quota);
            response.insert_header(RATELIMIT_POLICY, policy)?;
            if let Some(quota) = quota {
                response.insert_header(RATELIMIT, quota)?;
            }
        }
        Ok(())
    }
}

#[cfg(feature = "redis")]
impl RateLimitLayer {
    /// `request_filter` with the state in Redis: the key as usual, then a decision made now or
    /// an [`Admission::Pending`] that waits for Redis (never blocking the thread).
    fn request_filter_remote(
        &self,
        session: &mut Session,
        ctx: &mut RateLimitProxyCtx,
    ) -> Result<Admission> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let info = RequestInfo::from_parts(session.req_header());
        let checked = match self.key_for_peer(&info, peer) {
            Some(key) => self.check_remote(&key),
            None => return Ok(Admission::Continue),
        };
        match checked {
            Checked::Now(decision) => admission(decision, &mut ctx.quota, self.limit_of()),
            Checked::Later(decision) => {
                let slot = self.exposes_headers().then(|| Arc::new(Mutex::new(None)));
                ctx.decided.clone_from(&slot);
                let limit = self.limit_of();
                Ok(Admission::Pending(Box::pin(async move {
                    let mut quota = None;
                    let admitted = admission(decision.await, &mut quota, limit);
                    if let Some(slot) = slot {
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) = quota;
                    }
                    admitted
                })))
            }
        }
    }
}
