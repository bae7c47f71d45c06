//! The client's address: the socket peer, or what trusted proxies in front of it recorded in
//! `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderName;
use http::HeaderMap;

use super::cidr::CidrSet;

/// The `X-Forwarded-For` request header.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client of a request whose socket peer is `peer`.
///
/// While the address in hand is a trusted proxy's, the next `X-Forwarded-For` entry from the
/// right (the address that proxy saw) takes its place; the walk stops at the first address
/// that is not a trusted proxy's, which is the client. So an untrusted peer's header is never
/// read, and entries a client wrote itself (left of its own address) are never reached. An
/// entry that is not an address ends the walk at the trusted proxy that passed it on; a list
/// of trusted proxies only ends at its leftmost entry.
pub(super) fn client_ip(peer: IpAddr, trusted: &CidrSet, headers: &HeaderMap) -> IpAddr {
    let mut client = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(client) {
        return client;
    }
    let entries = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','));
    for entry in entries {
        match parse_entry(entry) {
            Some(ip) => client = ip.to_canonical(),
            None => break,
        }
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`[v6]:p`, `v4:p`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|sa| sa.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn set(nets: &[&str]) -> CidrSet {
        let mut set = CidrSet::default();
        for n in nets {
            set.push(n.parse().unwrap());
        }
        set
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let trusted = set(&["10.0.0.0/8"]);
        let spoof = xff(&["10.0.0.1, 192.0.2.99"]);
        assert_eq!(
            client_ip(ip("203.0.113.5"), &trusted, &spoof),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("203.0.113.5"), &set(&[]), &spoof),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let trusted = set(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        // The client wrote `1.1.1.1` itself; the first proxy appended the real peer.
        let h = xff(&["1.1.1.1, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(client_ip(ip("10.0.0.3"), &trusted, &h), ip("198.51.100.7"));
        let h = xff(&["[2001:db8::5]:443, 2001:db8:ffff::1"]);
        assert_eq!(client_ip(ip("10.9.9.9"), &trusted, &h), ip("2001:db8::5"));
        // Mapped addresses are compared as IPv4.
        let h = xff(&["::ffff:192.0.2.1"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &trusted, &h),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn the_walk_stops_at_garbage_or_the_left_end() {
        let trusted = set(&["10.0.0.0/8"]);
        let h = xff(&["192.0.2.1, junk, 10.0.0.7"]);
        assert_eq!(client_ip(ip("10.0.0.3"), &trusted, &h), ip("10.0.0.7"));
        let h = xff(&["10.0.0.8, 10.0.0.7"]);
        assert_eq!(client_ip(ip("10.0.0.3"), &trusted, &h), ip("10.0.0.8"));
        assert_eq!(
            client_ip(ip("10.0.0.3"), &trusted, &HeaderMap::new()),
            ip("10.0.0.3")
        );
    }
}
