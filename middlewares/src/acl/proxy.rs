//! The Pingora host of [`Acl`](super::Acl): admission in `request_filter`, before any upstream
//! work, with the client address from the session.

use pingora_error::Result;
use pingora_proxy::Session;

use super::AclLayer;
use crate::proxy_host::{Admission, PeerStep, ProxyPolicy};
use crate::{Rejection, RequestInfo};

impl ProxyPolicy for AclLayer {
    type Ctx = ();

    fn new_ctx(&self) {}

    /// Decides with the same [`AclLayer::check`] as the tower host; a refusal is answered
    /// with [`Denied`](super::Denied)'s head and no upstream is contacted.
    fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<Admission> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let info = RequestInfo::from_parts(session.req_header());
        match self.check(&info, peer) {
            Ok(()) => Ok(Admission::Continue),
            Err(denied) => Ok(Admission::Respond(denied.to_response_head()?)),
        }
    }

    fn before_upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<PeerStep> {
        Ok(PeerStep::PassThrough)
    }
}
