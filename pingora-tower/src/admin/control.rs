//! `POST /breakers/{key}/open|closed|reset`: an operator forces a backend's circuit breaker, or
//! hands it back to automatic operation, when
//! [`ProxyBuilder::admin_breaker_control`](crate::proxy::ProxyBuilder::admin_breaker_control)
//! allows it.
//!
//! Only existing breakers are found (an unknown key is `404` and creates nothing), so a caller
//! cannot grow the breaker registry by naming addresses.
//!
//! A web page the operator has open must not reach these: a cross-site form `POST` to the
//! loopback listener needs no CORS preflight, and a DNS-rebound name makes any page "same
//! origin". So a request a browser sends on a page's behalf (one with `Origin`, or with
//! `Sec-Fetch-Site` other than `none`) is refused, and so is one whose `Host` is a name other
//! than `localhost` rather than an address. `curl` and scripts send neither header.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, HOST, ORIGIN};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use middlewares::circuit_breaker::Breaker;
use middlewares::obs::Metrics;

use super::{json, text};

/// The path prefix of the control endpoints.
pub(crate) const PREFIX: &str = "/breakers/";

/// What a control request does to a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Reject every call until changed again.
    Open,
    /// Admit every call and never open, however the backend fares.
    Closed,
    /// Back to `Closed` with an empty window: automatic operation again.
    Reset,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "open" => Some(Action::Open),
            "closed" => Some(Action::Closed),
            "reset" => Some(Action::Reset),
            _ => None,
        }
    }

    fn apply(self, breaker: &Breaker) {
        match self {
            Action::Open => breaker.force_open(),
            Action::Closed => breaker.force_closed(),
            Action::Reset => breaker.reset(),
        }
    }
}

/// Answers a request whose path is `PREFIX` followed by `rest`. `enabled` is the builder's
/// opt-in; without it nothing is looked up and nothing changes.
pub(crate) fn answer(
    metrics: &Metrics,
    enabled: bool,
    method: &Method,
    headers: &HeaderMap,
    client: Option<std::net::SocketAddr>,
    rest: &str,
) -> Response<Full<Bytes>> {
    if !enabled {
        return text(
            StatusCode::FORBIDDEN,
            "breaker control is off (ProxyBuilder::admin_breaker_control)\n".into(),
            "text/plain",
        );
    }
    if let Some(why) = from_a_web_page(headers) {
        tracing::warn!(
            why,
            client = client.map(tracing::field::display),
            "breaker control refused a request sent by a browser"
        );
        return text(
            StatusCode::FORBIDDEN,
            format!("breaker control refused: {why}\n"),
            "text/plain",
        );
    }
    if method != Method::POST {
        let mut res = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST only\n".into(),
            "text/plain",
        );
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    let Some((raw_key, action)) = rest.rsplit_once('/') else {
        return usage();
    };
    let Some(action) = Action::parse(action) else {
        return usage();
    };
    let Some(key) = percent_decode(raw_key) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("breaker key {raw_key:?}: malformed percent-encoding\n"),
            "text/plain",
        );
    };
    let Some(breaker) = metrics.find_breaker(&key) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no breaker {key:?}\n"),
            "text/plain",
        );
    };
    action.apply(&breaker);
    let state = breaker.state().as_str();
    tracing::warn!(
        breaker = breaker.key(),
        state,
        client = client.map(tracing::field::display),
        "circuit breaker overridden from the admin listener"
    );
    let mut body = String::with_capacity(64);
    body.push_str("{\"breaker\":");
    json::string(&mut body, breaker.key());
    body.push_str(",\"state\":");
    json::string(&mut body, state);
    body.push('}');
    text(StatusCode::OK, body, "application/json")
}

/// Why a request looks sent by a browser for some web page (see the module docs), if it does.
fn from_a_web_page(headers: &HeaderMap) -> Option<&'static str> {
    if headers.contains_key(ORIGIN) {
        return Some("the request has an Origin header");
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() != b"none")
    {
        return Some("the request came from a web page (Sec-Fetch-Site)");
    }
    let host = headers.get(HOST).map(HeaderValue::as_bytes);
    if host.is_some_and(|host| !is_address_or_localhost(host)) {
        return Some("the Host header names neither an address nor localhost");
    }
    None
}

/// `host[:port]` where host is `localhost`, an IPv4 address or a bracketed IPv6 one.
fn is_address_or_localhost(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn usage() -> Response<Full<Bytes>> {
    text(
        StatusCode::NOT_FOUND,
        "not found: try POST /breakers/{key}/open, /closed or /reset\n".into(),
        "text/plain",
    )
}

/// Decodes `%XX` escapes (an IPv6 key such as `[::1]:9000` may arrive as
/// `%5B%3A%3A1%5D%3A9000`); `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ipv6_keys_and_refuses_bad_escapes() {
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D%3A9000").as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(
            percent_decode("127.0.0.1:9000").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(percent_decode("%5b::1%5d:1").as_deref(), Some("[::1]:1"));
        for bad in ["%", "%5", "%zz", "%+f", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn actions() {
        assert_eq!(Action::parse("open"), Some(Action::Open));
        assert_eq!(Action::parse("closed"), Some(Action::Closed));
        assert_eq!(Action::parse("reset"), Some(Action::Reset));
        assert_eq!(Action::parse("close"), None);
        assert_eq!(Action::parse(""), None);
    }
}
