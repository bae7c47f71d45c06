//! A proxy-side layer of your own (`cargo run --example request_id_policy`): every request gets
//! an `x-request-id` (the client's, or a new one), sent upstream and echoed to the client.

use std::sync::{atomic::AtomicU64, atomic::Ordering::Relaxed, Arc};

use http::HeaderValue;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use pingora_tower::middleware::proxy_host::{Admission, ProxyPolicy};

/// The policy, and the counter its clones share.
#[derive(Clone, Default)]
pub struct RequestIds(Arc<AtomicU64>);

impl ProxyPolicy for RequestIds {
    type Ctx = HeaderValue; // this request's id, sent up and echoed back
    fn new_ctx(&self) -> HeaderValue {
        HeaderValue::from_static("")
    }
    fn request_filter(&self, s: &mut Session, id: &mut HeaderValue) -> Result<Admission> {
        *id = match s.req_header().headers.get("x-request-id") {
            Some(sent) if (1..=64).contains(&sent.len()) => sent.clone(),
            _ => HeaderValue::from(self.0.fetch_add(1, Relaxed)),
        };
        Ok(Admission::Continue)
    }
    fn upstream_request_filter(
        &self,
        _: &mut Session,
        up: &mut RequestHeader,
        id: &mut HeaderValue,
    ) -> Result<()> {
        up.insert_header("x-request-id", id.clone())
    }
    fn response_filter(
        &self,
        _: &mut Session,
        res: &mut ResponseHeader,
        id: &mut HeaderValue,
    ) -> Result<()> {
        res.insert_header("x-request-id", id.clone())
    }
}
