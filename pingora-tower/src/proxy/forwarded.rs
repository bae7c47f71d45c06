//! Who asked: the `X-Forwarded-*` headers the proxy adds to upstream requests, and the removal
//! of client-sent `Forwarded` and `X-Real-IP`, which the proxy cannot vouch for.

use http::header::{HeaderName, HeaderValue, FORWARDED};
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

// Lookups use the `HeaderName`s. Pingora's `insert_header` parses whatever name it is given
// again, and takes a `&'static str` without copying it (a custom `HeaderName` is copied
// first), so inserts use the text the `HeaderName` is made from.
const XFF: &str = "x-forwarded-for";
const XFP: &str = "x-forwarded-proto";
const XFH: &str = "x-forwarded-host";

/// `X-Forwarded-For`: the client IPs, this proxy's client appended last.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static(XFF);
/// `X-Forwarded-Proto`: the scheme the client used (`http` or `https`).
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(XFP);
/// `X-Forwarded-Host`: the canonical host the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static(XFH);
/// `X-Real-IP`: removed from client requests (see
/// [`keep_client_forwarded`](super::ProxyBuilder::keep_client_forwarded)).
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes client-sent `Forwarded` and `X-Real-IP`.
pub(super) fn strip_client_forwarded(upstream_request: &mut RequestHeader) {
    // Looked up first: removing costs more than finding nothing.
    if upstream_request.headers.contains_key(FORWARDED) {
        upstream_request.remove_header(&FORWARDED);
    }
    if upstream_request.headers.contains_key(X_REAL_IP) {
        upstream_request.remove_header(&X_REAL_IP);
    }
}

/// Appends the client IP to `X-Forwarded-For` and sets `X-Forwarded-Proto` and (when known)
/// `X-Forwarded-Host` to the canonical `host`.
pub(super) fn add(
    session: &Session,
    upstream_request: &mut RequestHeader,
    host: Option<&HeaderValue>,
) -> Result<()> {
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        // Appended to, not replaced: an upstream that trusts this header must trust
        // whoever connects to this proxy to have written the earlier entries.
        let mut forwarded = String::new();
        for earlier in upstream_request.headers.get_all(X_FORWARDED_FOR) {
            if let Ok(earlier) = earlier.to_str() {
                forwarded.push_str(earlier);
                forwarded.push_str(", ");
            }
        }
        forwarded.push_str(&ip.to_string());
        upstream_request.insert_header(XFF, forwarded)?;
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    upstream_request.insert_header(XFP, if tls { "https" } else { "http" })?;
    if let Some(host) = host {
        upstream_request.insert_header(XFH, host.clone())?;
    }
    Ok(())
}
