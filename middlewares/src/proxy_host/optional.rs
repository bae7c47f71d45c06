//! `Option<P>` is a policy: `Some` acts as `P`, `None` does nothing (and costs one branch per
//! hook), so a proxy can keep one service type whether a policy is configured or not.

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::{Admission, PeerChoice, PeerStep, ProxyPolicy};

impl<P: ProxyPolicy> ProxyPolicy for Option<P> {
    type Ctx = Option<P::Ctx>;

    fn new_ctx(&self) -> Self::Ctx {
        self.as_ref().map(P::new_ctx)
    }

    fn request_filter(&self, session: &mut Session, ctx: &mut Self::Ctx) -> Result<Admission> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.request_filter(session, ctx),
            _ => Ok(Admission::Continue),
        }
    }

    fn before_upstream_peer(&self, session: &mut Session, ctx: &mut Self::Ctx) -> Result<PeerStep> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.before_upstream_peer(session, ctx),
            _ => Ok(PeerStep::PassThrough),
        }
    }

    fn select_peer(
        &self,
        session: &mut Session,
        peer: &mut HttpPeer,
        ctx: &mut Self::Ctx,
    ) -> Result<PeerChoice> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.select_peer(session, peer, ctx),
            _ => Ok(PeerChoice::Accept),
        }
    }

    fn no_peer(&self, e: Box<Error>, ctx: &mut Self::Ctx) -> Box<Error> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.no_peer(e, ctx),
            _ => e,
        }
    }

    fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        ctx: &mut Self::Ctx,
    ) -> Result<()> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.connected_to_upstream(session, reused, peer, ctx),
            _ => Ok(()),
        }
    }

    fn span<'a>(&self, ctx: &'a Self::Ctx) -> Option<&'a tracing::Span> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.span(ctx),
            _ => None,
        }
    }

    fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::Ctx,
    ) -> Result<()> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.upstream_request_filter(session, upstream_request, ctx),
            _ => Ok(()),
        }
    }

    fn request_body_filter(&self, session: &mut Session, ctx: &mut Self::Ctx) -> Result<()> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.request_body_filter(session, ctx),
            _ => Ok(()),
        }
    }

    fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::Ctx,
    ) -> Result<()> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.upstream_response_filter(session, upstream_response, ctx),
            _ => Ok(()),
        }
    }

    fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::Ctx,
    ) -> Result<()> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.response_filter(session, response, ctx),
            _ => Ok(()),
        }
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::Ctx,
    ) -> Result<()> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.upstream_response_body_filter(session, ctx),
            _ => Ok(()),
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.fail_to_connect(session, peer, ctx, e),
            _ => e,
        }
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.error_while_proxy(peer, session, e, ctx, client_reused),
            _ => e,
        }
    }

    fn request_failed(&self, e: &Error, ctx: &mut Self::Ctx) {
        if let (Some(p), Some(ctx)) = (self, ctx) {
            p.request_failed(e, ctx);
        }
    }

    fn respond_to_failure(&self, e: &Error, ctx: &mut Self::Ctx) -> Option<Box<ResponseHeader>> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.respond_to_failure(e, ctx),
            _ => None,
        }
    }

    fn replace_final_error(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::Ctx,
    ) -> Option<Box<Error>> {
        match (self, ctx) {
            (Some(p), Some(ctx)) => p.replace_final_error(session, e, ctx),
            _ => None,
        }
    }

    fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::Ctx) {
        if let (Some(p), Some(ctx)) = (self, ctx) {
            p.logging(session, e, ctx);
        }
    }
}
