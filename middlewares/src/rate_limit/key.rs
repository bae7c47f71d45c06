//! Rate-limit keys: what a request is counted against.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::header::HeaderName;
use http::HeaderMap;

use crate::RequestInfo;

/// The `X-Forwarded-For` request header.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The closure behind [`Key::Custom`]: the key of a request, or `None` to exempt it.
pub type KeyFn = dyn Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync;

/// What a request is counted against. Set with
/// [`RateLimitBuilder::key`](super::RateLimitBuilder::key).
///
/// Every key gets a bucket of its own, except where noted:
/// - [`Key::Global`] (default): one bucket for every request.
/// - [`Key::ClientIp`]: the client's IP network, from the request extensions: axum's
///   `ConnectInfo<SocketAddr>` (with the `axum` feature), else a plain `SocketAddr`, else an
///   `IpAddr` (what the Pingora adapter inserts). `X-Forwarded-For` is read only when
///   [`trusted_hops`](super::RateLimitBuilder::trusted_hops) is set (read its warning). The
///   address is cut to a prefix: an IPv6 client is keyed by its /64 by default, since one
///   host or home is usually handed a whole /64 and can pick any address in it; an IPv4 client
///   by its address (/32). See [`ipv6_prefix`](super::RateLimitBuilder::ipv6_prefix) and
///   [`ipv4_prefix`](super::RateLimitBuilder::ipv4_prefix).
/// - [`Key::Header`]: the raw bytes of a request header's value (the first one if repeated).
/// - [`Key::Custom`]: a closure over [`RequestInfo`]; returning `None` means the request is **not
///   limited at all** (use it to exempt health checks, say).
///
/// When the client IP or the header cannot be found, the request is counted in one shared
/// "unknown" bucket (and logged at debug level), so a missing key never bypasses the limit.
#[derive(Clone, Default)]
pub enum Key {
    /// One bucket for every request.
    #[default]
    Global,
    /// One bucket per client IP network (/64 for IPv6, /32 for IPv4 by default).
    ClientIp,
    /// One bucket per value of this request header.
    Header(HeaderName),
    /// One bucket per string the closure returns; `None` exempts the request.
    Custom(Arc<KeyFn>),
}

impl Key {
    /// A [`Key::Custom`] from a closure.
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
    {
        Key::Custom(Arc::new(f))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Global => f.write_str("Global"),
            Key::ClientIp => f.write_str("ClientIp"),
            Key::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Key::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The key of one request, as found by
/// [`RateLimitLayer::key_for`](super::RateLimitLayer::key_for) and passed to
/// [`RateLimitLayer::check`](super::RateLimitLayer::check).
///
/// Borrows from the request where it can (header values), so finding a key allocates nothing
/// except for [`Key::Custom`] (whose closure returns a `String`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue<'a> {
    /// The one global bucket.
    Global,
    /// The shared bucket of requests whose key could not be found.
    Unknown,
    /// A client IP address (IPv4-mapped IPv6 addresses are stored as IPv4). From
    /// [`RateLimitLayer::key_for`](super::RateLimitLayer::key_for) it is the network address
    /// of the configured prefix (host bits zero); [`check`](super::RateLimitLayer::check)
    /// counts whatever address it is given.
    Ip(IpAddr),
    /// A header value or a custom key.
    Bytes(Cow<'a, [u8]>),
}

impl KeyValue<'_> {
    /// The same key, owning its bytes: for a decision that outlives the request (a remote
    /// store's call).
    pub fn into_owned(self) -> KeyValue<'static> {
        match self {
            KeyValue::Global => KeyValue::Global,
            KeyValue::Unknown => KeyValue::Unknown,
            KeyValue::Ip(ip) => KeyValue::Ip(ip),
            KeyValue::Bytes(bytes) => KeyValue::Bytes(Cow::Owned(bytes.into_owned())),
        }
    }
}

impl From<IpAddr> for KeyValue<'static> {
    fn from(ip: IpAddr) -> Self {
        KeyValue::Ip(ip.to_canonical())
    }
}

impl From<String> for KeyValue<'static> {
    fn from(s: String) -> Self {
        KeyValue::Bytes(Cow::Owned(s.into_bytes()))
    }
}

impl<'a> From<&'a str> for KeyValue<'a> {
    fn from(s: &'a str) -> Self {
        KeyValue::Bytes(Cow::Borrowed(s.as_bytes()))
    }
}

impl fmt::Display for KeyValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Global => f.write_str("global"),
            KeyValue::Unknown => f.write_str("unknown"),
            KeyValue::Ip(ip) => ip.fmt(f),
            KeyValue::Bytes(bytes) => f.write_str(&String::from_utf8_lossy(bytes)),
        }
    }
}

/// How many leading bits of a client address make its key
/// ([`RateLimitBuilder::ipv4_prefix`](super::RateLimitBuilder::ipv4_prefix),
/// [`ipv6_prefix`](super::RateLimitBuilder::ipv6_prefix)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IpPrefixes {
    /// 0..=32.
    pub(super) v4: u8,
    /// 0..=128.
    pub(super) v6: u8,
}

impl Default for IpPrefixes {
    fn default() -> Self {
        IpPrefixes { v4: 32, v6: 64 }
    }
}

impl IpPrefixes {
    /// `ip` (canonical: IPv4-mapped addresses as IPv4) with the bits past its prefix zeroed.
    pub(super) fn mask(self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.v4)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.v6)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

/// Finds the key of a request. `peer` overrides the extension lookup of the client address
/// (the Pingora host knows it from the session).
pub(super) fn key_for<'a>(
    key: &Key,
    trusted_hops: usize,
    prefixes: IpPrefixes,
    info: &RequestInfo<'a>,
    peer: Option<IpAddr>,
) -> Option<KeyValue<'a>> {
    match key {
        Key::Global => Some(KeyValue::Global),
        Key::ClientIp => Some(match client_ip(info, trusted_hops, peer) {
            Some(ip) => KeyValue::Ip(prefixes.mask(ip)),
            None => {
                tracing::debug!("rate limit: no client address; counting in the unknown bucket");
                KeyValue::Unknown
            }
        }),
        Key::Header(name) => Some(match info.headers.get(name) {
            Some(value) => KeyValue::Bytes(Cow::Borrowed(value.as_bytes())),
            None => {
                tracing::debug!(header = %name, "rate limit: key header missing; counting in the unknown bucket");
                KeyValue::Unknown
            }
        }),
        Key::Custom(f) => f(info).map(KeyValue::from),
    }
}

/// The client IP: from `X-Forwarded-For` when `trusted_hops > 0` and it has enough entries,
/// else from the connection. The header is believed as it arrives: see the warning on
/// [`trusted_hops`](super::RateLimitBuilder::trusted_hops).
fn client_ip(info: &RequestInfo<'_>, trusted_hops: usize, peer: Option<IpAddr>) -> Option<IpAddr> {
    if trusted_hops > 0 {
        match forwarded_for(info.headers, trusted_hops) {
            Some(ip) => return Some(ip),
            None => tracing::debug!(
                trusted_hops,
                "rate limit: X-Forwarded-For missing, too short or invalid; using the connection address"
            ),
        }
    }
    peer.or_else(|| connection_ip(info))
}

/// The `n`-th address from the right of the `X-Forwarded-For` list (`n` ≥ 1), where repeated
/// headers count as one list in order.
fn forwarded_for(headers: &HeaderMap, n: usize) -> Option<IpAddr> {
    let entry = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','))
        .nth(n - 1)?;
    let entry = std::str::from_utf8(entry).ok()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|sa| sa.ip()))
}

/// The peer address the server put into the request extensions.
fn connection_ip(info: &RequestInfo<'_>) -> Option<IpAddr> {
    info.connection_ip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwarded_for_counts_from_the_right_across_headers() {
        let h = xff(&["203.0.113.9, 10.0.0.1", "10.0.0.2"]);
        assert_eq!(forwarded_for(&h, 1), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(forwarded_for(&h, 2), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(forwarded_for(&h, 3), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(forwarded_for(&h, 4), None);
        let h = xff(&["[2001:db8::1]:443", "198.51.100.7:80"]);
        assert_eq!(forwarded_for(&h, 1), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(forwarded_for(&h, 2), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(forwarded_for(&xff(&["junk"]), 1), None);
    }

    #[test]
    fn client_ip_falls_back_to_the_connection() {
        let mut req = Request::new(());
        *req.headers_mut() = xff(&["203.0.113.9"]);
        req.extensions_mut()
            .insert(SocketAddr::from(([192, 0, 2, 1], 5000)));
        let info = RequestInfo::from_request(&req);
        let conn: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(&info, 0, None), Some(conn));
        assert_eq!(
            client_ip(&info, 1, None),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(client_ip(&info, 2, None), Some(conn));
        let peer: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(client_ip(&info, 0, Some(peer)), Some(peer));
    }

    #[test]
    fn mapped_ipv6_is_canonical() {
        let req = {
            let mut r = Request::new(());
            r.extensions_mut()
                .insert("::ffff:192.0.2.1".parse::<IpAddr>().unwrap());
            r
        };
        let info = RequestInfo::from_request(&req);
        let key = key_for(&Key::ClientIp, 0, IpPrefixes::default(), &info, None);
        assert_eq!(key, Some(KeyValue::Ip("192.0.2.1".parse().unwrap())));
    }

    #[test]
    fn addresses_are_cut_to_their_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let default = IpPrefixes::default();
        assert_eq!(
            default.mask(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(default.mask(ip("192.0.2.77")), ip("192.0.2.77"));
        assert_eq!(default.mask(ip("::ffff:192.0.2.77")), ip("192.0.2.77"));
        let wide = IpPrefixes { v4: 24, v6: 48 };
        assert_eq!(wide.mask(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1::"));
        assert_eq!(wide.mask(ip("192.0.2.77")), ip("192.0.2.0"));
        let ends = IpPrefixes { v4: 0, v6: 128 };
        assert_eq!(ends.mask(ip("192.0.2.77")), ip("0.0.0.0"));
        assert_eq!(ends.mask(ip("2001:db8::6")), ip("2001:db8::6"));
        let none = IpPrefixes { v4: 32, v6: 0 };
        assert_eq!(none.mask(ip("2001:db8::6")), ip("::"));
    }
}
