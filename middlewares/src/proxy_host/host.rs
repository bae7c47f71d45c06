//! The one `ProxyHttp` impl of the proxy host, for every [`Layered<P, S>`](crate::Layered).
//!
//! Every method forwards to the inner proxy; the [`ProxyPolicy`] is called at the phases it may
//! act in, as documented on each of its hooks. The async methods are written in the form
//! `#[async_trait]` gives them, so that a phase returns the inner proxy's future itself whenever
//! the policy has nothing to wait for: one allocation per phase for a whole stack, not one per
//! layer. Synchronous hooks run before the inner proxy's method on the way in (the outer layer
//! first) and after it on the way out (failure hooks: the outer layer last, so it has the final
//! word on a retry).
//!
//! A policy may give a span ([`ProxyPolicy::span`], the observability layer's request span):
//! while it is enabled, every call into the inner proxy at the phases where layers decide
//! (admission, peer selection, the exchange's heads and failures, logging) runs with the span
//! entered, and the async ones have their future polled inside it, so the inner layers' events
//! are the request's. A disabled span (no subscriber, or [`Span::none`]) is not entered and the
//! inner future is returned as it is: no extra allocation.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, PurgeAction, RespCacheable};
use pingora_core::modules::http::HttpModules;
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, PurgeStatus, RangeType, Session};
use tokio::sync::mpsc;
use tracing::{Instrument, Span};

use super::{Admission, LayerCtx, PeerChoice, PeerStep, ProxyPolicy, MAX_PEER_SKIPS};
use crate::Layered;

/// What `#[async_trait]` makes of an `async fn` in `ProxyHttp`.
type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The policy's span, when a subscriber records it.
fn enabled(span: Option<&Span>) -> Option<&Span> {
    span.filter(|span| !span.is_disabled())
}

/// Calls into the inner proxy (`call`) inside `span`: entered while `call` runs (the inner
/// layers' synchronous hooks run there) and around each poll of the future it returns. Without
/// an enabled span, `call`'s future itself.
fn in_span<'a, T: 'a>(span: Option<&Span>, call: impl FnOnce() -> Fut<'a, T>) -> Fut<'a, T> {
    match enabled(span) {
        None => call(),
        Some(span) => {
            let fut = span.in_scope(call);
            Box::pin(fut.instrument(span.clone()))
        }
    }
}

/// `fut` boxed, polled inside `span` when it is enabled: for a phase that wraps the inner
/// proxy's future anyway, so the span costs no second allocation. (Owned: `fut` borrows the
/// context the span lives in; a disabled span's clone is a copy.)
fn boxed_in<'a, T>(span: Option<Span>, fut: impl Future<Output = T> + Send + 'a) -> Fut<'a, T> {
    match span.filter(|span| !span.is_disabled()) {
        None => Box::pin(fut),
        Some(span) => Box::pin(fut.instrument(span)),
    }
}

#[async_trait]
impl<P, S> ProxyHttp for Layered<P, S>
where
    P: ProxyPolicy,
    S: ProxyHttp + Send + Sync,
    S::CTX: Send + Sync,
{
    type CTX = LayerCtx<S::CTX, P::Ctx>;

    // Inlined, so the nested contexts are built in place rather than each copied into the next.
    #[inline]
    fn new_ctx(&self) -> Self::CTX {
        LayerCtx {
            inner: self.inner.new_ctx(),
            own: self.policy.new_ctx(),
        }
    }

    fn upstream_peer<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
    ) -> Fut<'async_trait, Result<Box<HttpPeer>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let policy = &self.policy;
        let wait = match policy.before_upstream_peer(session, &mut ctx.own) {
            Ok(PeerStep::PassThrough) => {
                let LayerCtx { inner, own } = ctx;
                return in_span(policy.span(own), move || {
                    self.inner.upstream_peer(session, inner)
                });
            }
            Ok(PeerStep::Select) => None,
            Ok(PeerStep::Wait(wait)) => Some(wait),
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Wrapped: the policy sees the peer the inner proxy picked.
        boxed_in(policy.span(&ctx.own).cloned(), async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            for _ in 0..=MAX_PEER_SKIPS {
                let mut peer = match self.inner.upstream_peer(session, &mut ctx.inner).await {
                    Ok(peer) => peer,
                    Err(e) => return Err(policy.no_peer(e, &mut ctx.own)),
                };
                match policy.select_peer(session, &mut peer, &mut ctx.own)? {
                    PeerChoice::Accept => return Ok(peer),
                    PeerChoice::Skip => continue,
                }
            }
            let e = Error::explain(
                pingora_error::ErrorType::ConnectNoRoute,
                "every peer offered was skipped",
            );
            Err(policy.no_peer(e, &mut ctx.own))
        })
    }

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        self.inner.init_downstream_modules(modules)
    }

    #[cfg(feature = "upstream_modules")]
    fn init_upstream_modules(&self, modules: &mut HttpModules) {
        self.inner.init_upstream_modules(modules)
    }

    fn request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
    ) -> Fut<'async_trait, Result<bool>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        // Asked after the policy's own hook: an observability policy opens its span there.
        match self.policy.request_filter(session, &mut ctx.own) {
            Ok(Admission::Continue) => {
                let LayerCtx { inner, own } = ctx;
                in_span(self.policy.span(own), move || {
                    self.inner.request_filter(session, inner)
                })
            }
            Ok(decided) => boxed_in(self.policy.span(&ctx.own).cloned(), async move {
                let mut admission = decided;
                loop {
                    match admission {
                        Admission::Continue => break,
                        Admission::Wait(wait) => {
                            tokio::time::sleep(wait).await;
                            break;
                        }
                        Admission::Respond(head) => {
                            session.set_keepalive(None);
                            session.write_response_header(head, true).await?;
                            return Ok(true);
                        }
                        Admission::Pending(decision) => admission = decision.await?,
                    }
                }
                self.inner.request_filter(session, &mut ctx.inner).await
            }),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn early_request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.early_request_filter(session, &mut ctx.inner)
    }

    fn allow_spawning_subrequest(&self, session: &Session, ctx: &Self::CTX) -> bool {
        self.inner.allow_spawning_subrequest(session, &ctx.inner)
    }

    fn request_body_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        body: &'life2 mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &'life3 mut Self::CTX,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        if let Err(e) = self.policy.request_body_filter(session, &mut ctx.own) {
            return Box::pin(std::future::ready(Err(e)));
        }
        // Per chunk: the span is entered while the inner layers' hooks run (they decide
        // synchronously), but the inner proxy's future is not wrapped.
        let _entered = enabled(self.policy.span(&ctx.own)).map(Span::enter);
        self.inner
            .request_body_filter(session, body, end_of_stream, &mut ctx.inner)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        self.inner.request_cache_filter(session, &mut ctx.inner)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        self.inner.cache_key_callback(session, &mut ctx.inner)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Self::CTX) {
        self.inner.cache_miss(session, &mut ctx.inner)
    }

    fn cache_hit_filter<'life0, 'life1, 'life2, 'life3, 'life4, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        meta: &'life2 CacheMeta,
        hit_handler: &'life3 mut HitHandler,
        is_fresh: bool,
        ctx: &'life4 mut Self::CTX,
    ) -> Fut<'async_trait, Result<Option<ForcedFreshness>>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        'life4: 'async_trait,
        Self: 'async_trait,
    {
        self.inner
            .cache_hit_filter(session, meta, hit_handler, is_fresh, &mut ctx.inner)
    }

    fn proxy_upstream_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
    ) -> Fut<'async_trait, Result<bool>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.proxy_upstream_filter(session, &mut ctx.inner)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        self.inner
            .response_cache_filter(session, resp, &mut ctx.inner)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        self.inner.cache_vary_filter(meta, &mut ctx.inner, req)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        self.inner
            .cache_not_modified_filter(session, resp, &mut ctx.inner)
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> RangeType {
        self.inner
            .range_header_filter(session, resp, &mut ctx.inner)
    }

    fn upstream_request_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        upstream_request: &'life2 mut RequestHeader,
        ctx: &'life3 mut Self::CTX,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        if let Err(e) = self
            .policy
            .upstream_request_filter(session, upstream_request, &mut ctx.own)
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        let LayerCtx { inner, own } = ctx;
        in_span(self.policy.span(own), move || {
            self.inner
                .upstream_request_filter(session, upstream_request, inner)
        })
    }

    #[cfg(feature = "upstream_modules")]
    fn adjust_upstream_modules<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        upstream_response: &'life2 ResponseHeader,
        end_of_stream: bool,
        ctx: &'life3 mut Self::CTX,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.adjust_upstream_modules(
            session,
            upstream_response,
            end_of_stream,
            &mut ctx.inner,
        )
    }

    fn upstream_response_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        upstream_response: &'life2 mut ResponseHeader,
        ctx: &'life3 mut Self::CTX,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        // Pingora passes interim heads (`100`, `103`) through here before the final one; a
        // policy sees the answer only (`101` is final: the connection changes protocol).
        let status = upstream_response.status;
        let interim = status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS;
        if !interim {
            if let Err(e) =
                self.policy
                    .upstream_response_filter(session, upstream_response, &mut ctx.own)
            {
                return Box::pin(std::future::ready(Err(e)));
            }
        }
        let LayerCtx { inner, own } = ctx;
        in_span(self.policy.span(own), move || {
            self.inner
                .upstream_response_filter(session, upstream_response, inner)
        })
    }

    fn response_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        upstream_response: &'life2 mut ResponseHeader,
        ctx: &'life3 mut Self::CTX,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        if let Err(e) = self
            .policy
            .response_filter(session, upstream_response, &mut ctx.own)
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        let LayerCtx { inner, own } = ctx;
        in_span(self.policy.span(own), move || {
            self.inner
                .response_filter(session, upstream_response, inner)
        })
    }

    fn custom_forwarding<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Self::CTX,
        custom_message_to_upstream: Option<mpsc::Sender<Bytes>>,
        custom_message_to_downstream: mpsc::Sender<Bytes>,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.custom_forwarding(
            session,
            &mut ctx.inner,
            custom_message_to_upstream,
            custom_message_to_downstream,
        )
    }

    fn downstream_custom_message_proxy_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        custom_message: Bytes,
        ctx: &'life2 mut Self::CTX,
        final_hop: bool,
    ) -> Fut<'async_trait, Result<Option<Bytes>>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.downstream_custom_message_proxy_filter(
            session,
            custom_message,
            &mut ctx.inner,
            final_hop,
        )
    }

    fn upstream_custom_message_proxy_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        custom_message: Bytes,
        ctx: &'life2 mut Self::CTX,
        final_hop: bool,
    ) -> Fut<'async_trait, Result<Option<Bytes>>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.upstream_custom_message_proxy_filter(
            session,
            custom_message,
            &mut ctx.inner,
            final_hop,
        )
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        self.policy
            .upstream_response_body_filter(session, &mut ctx.own)?;
        let _entered = enabled(self.policy.span(&ctx.own)).map(Span::enter);
        self.inner
            .upstream_response_body_filter(session, body, end_of_stream, &mut ctx.inner)
    }

    fn upstream_response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.inner
            .upstream_response_trailer_filter(session, upstream_trailers, &mut ctx.inner)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let _entered = enabled(self.policy.span(&ctx.own)).map(Span::enter);
        self.inner
            .response_body_filter(session, body, end_of_stream, &mut ctx.inner)
    }

    fn response_trailer_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        upstream_trailers: &'life2 mut HeaderMap,
        ctx: &'life3 mut Self::CTX,
    ) -> Fut<'async_trait, Result<Option<Bytes>>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        self.inner
            .response_trailer_filter(session, upstream_trailers, &mut ctx.inner)
    }

    fn logging<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        e: Option<&'life2 Error>,
        ctx: &'life3 mut Self::CTX,
    ) -> Fut<'async_trait, ()>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        self.policy.logging(session, e, &mut ctx.own);
        let LayerCtx { inner, own } = ctx;
        in_span(self.policy.span(own), move || {
            self.inner.logging(session, e, inner)
        })
    }

    fn persist_connection_context(
        &self,
        session: &Session,
        ctx: &Self::CTX,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        self.inner.persist_connection_context(session, &ctx.inner)
    }

    fn on_connection_reuse(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        prev_ctx: Box<dyn Any + Send + Sync>,
    ) {
        self.inner
            .on_connection_reuse(session, &mut ctx.inner, prev_ctx)
    }

    fn suppress_error_log(&self, session: &Session, ctx: &Self::CTX, error: &Error) -> bool {
        self.inner.suppress_error_log(session, &ctx.inner, error)
    }

    fn suppress_proxy_warn_log(
        &self,
        session: &Session,
        ctx: &Self::CTX,
        error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        self.inner
            .suppress_proxy_warn_log(session, &ctx.inner, error, context)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let e = {
            let _entered = enabled(self.policy.span(&ctx.own)).map(Span::enter);
            self.inner
                .error_while_proxy(peer, session, e, &mut ctx.inner, client_reused)
        };
        self.policy
            .error_while_proxy(peer, session, e, &mut ctx.own, client_reused)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        let e = {
            let _entered = enabled(self.policy.span(&ctx.own)).map(Span::enter);
            self.inner.fail_to_connect(session, peer, &mut ctx.inner, e)
        };
        self.policy.fail_to_connect(session, peer, &mut ctx.own, e)
    }

    // The failure path: one allocation per layer is fine here.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let policy = &self.policy;
        policy.request_failed(e, &mut ctx.own);
        if let Some(head) = policy.respond_to_failure(e, &mut ctx.own) {
            let error_code = head.status.as_u16();
            session.set_keepalive(None);
            if let Err(e) = session.write_response_header(head, true).await {
                tracing::debug!(error = %e, "could not write the failure response");
            }
            return FailToProxy {
                error_code,
                can_reuse_downstream: false,
            };
        }
        let replaced = policy.replace_final_error(session, e, &mut ctx.own);
        let e = replaced.as_deref().unwrap_or(e);
        let LayerCtx { inner, own } = ctx;
        in_span(policy.span(own), move || {
            self.inner.fail_to_proxy(session, e, inner)
        })
        .await
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        self.inner
            .should_serve_stale(session, &mut ctx.inner, error)
    }

    fn connected_to_upstream<'life0, 'life1, 'life2, 'life3, 'life4, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        reused: bool,
        peer: &'life2 HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] sock: std::os::windows::io::RawSocket,
        digest: Option<&'life3 Digest>,
        ctx: &'life4 mut Self::CTX,
    ) -> Fut<'async_trait, Result<()>>
    where
        Self::CTX: Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        'life4: 'async_trait,
        Self: 'async_trait,
    {
        if let Err(e) = self
            .policy
            .connected_to_upstream(session, reused, peer, &mut ctx.own)
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        let LayerCtx { inner, own } = ctx;
        in_span(self.policy.span(own), move || {
            self.inner.connected_to_upstream(
                session,
                reused,
                peer,
                #[cfg(unix)]
                fd,
                #[cfg(windows)]
                sock,
                digest,
                inner,
            )
        })
    }

    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        self.inner.request_summary(session, &ctx.inner)
    }

    fn is_purge(&self, session: &Session, ctx: &Self::CTX) -> bool {
        self.inner.is_purge(session, &ctx.inner)
    }

    fn purge_action(&self, session: &Session, ctx: &Self::CTX) -> PurgeAction {
        self.inner.purge_action(session, &ctx.inner)
    }

    fn purge_response_filter(
        &self,
        session: &Session,
        ctx: &mut Self::CTX,
        purge_status: PurgeStatus,
        purge_response: &mut Cow<'static, ResponseHeader>,
    ) -> Result<()> {
        self.inner
            .purge_response_filter(session, &mut ctx.inner, purge_status, purge_response)
    }
}
