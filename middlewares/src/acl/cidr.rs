//! IP networks (`10.0.0.0/8`, `2001:db8::/32`) and sets of them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address with its host bits zero and a prefix length.
///
/// Parsed from `addr/len` or a bare address (a /32 or /128). An IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it maps (`10.0.0.0/8`), and addresses
/// are compared in their canonical form, so a client reaching a dual-stack socket as
/// `::ffff:10.1.2.3` is inside `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

/// Why a network did not parse (the message says what is expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidCidr(&'static str);

impl fmt::Display for InvalidCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidCidr {}

impl Cidr {
    /// The network `net/len`.
    ///
    /// # Errors
    /// When `len` is longer than the address (32 for IPv4, 128 for IPv6) or `net` has bits set
    /// past `len` (`10.0.0.1/8` is refused rather than read as `10.0.0.0/8`: it is usually a
    /// typo for a host or a narrower network).
    pub fn new(net: IpAddr, len: u8) -> Result<Self, InvalidCidr> {
        let (net, len) = match net {
            // IPv4-mapped: `::ffff:a.b.c.d/96+n` is `a.b.c.d/n`.
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && len >= 96 => {
                (net.to_canonical(), len - 96)
            }
            other => (other, len),
        };
        let max = max_len(net);
        if len > max {
            return Err(InvalidCidr(
                "a prefix length of at most 32 (IPv4) or 128 (IPv6)",
            ));
        }
        if bits(net) & !mask(len, max) != 0 {
            return Err(InvalidCidr(
                "a network address with the bits past the prefix length zero",
            ));
        }
        Ok(Cidr { net, len })
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.net
    }

    /// The prefix length (on the IPv4 scale for an IPv4 network).
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` (in any form, IPv4-mapped included) is in this network.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                (bits(ip) ^ bits(self.net)) & mask(self.len, max_len(ip)) == 0
            }
            _ => false,
        }
    }

    /// Whether the two networks share an address (one contains the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = if self.len <= other.len { self } else { other };
        let longer = if self.len <= other.len { other } else { self };
        shorter.contains(longer.net)
    }
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, InvalidCidr> {
        const SYNTAX: InvalidCidr =
            InvalidCidr("an IP address or network such as 192.0.2.0/24 or 2001:db8::/32");
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| SYNTAX)?;
        let len = match len {
            // Digits only: `u8::from_str` would take a `+`.
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse::<u8>().map_err(|_| SYNTAX)?
            }
            Some(_) => return Err(SYNTAX),
            None => match net.to_canonical() {
                IpAddr::V4(_) if net.is_ipv6() => 128,
                other => max_len(other),
            },
        };
        Cidr::new(net, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

fn max_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The address as an integer (IPv4 in the low 32 bits).
#[inline]
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The first `len` of `max` bits set, in the low `max` bits.
#[inline]
fn mask(len: u8, max: u8) -> u128 {
    let all = if max == 128 {
        u128::MAX
    } else {
        (1u128 << max) - 1
    };
    let host = all.checked_shr(u32::from(len)).unwrap_or(0);
    all & !host
}

/// A list of networks, searched in order (an ACL rule has a few; a linear scan over a few
/// integers beats any tree at that size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    pub(crate) fn push(&mut self, cidr: Cidr) {
        match cidr.net {
            IpAddr::V4(net) => {
                let mask = mask(cidr.len, 32) as u32;
                self.v4.push((u32::from(net), mask));
            }
            IpAddr::V6(net) => self.v6.push((u128::from(net), mask(cidr.len, 128))),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    #[inline]
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let ip = u32::from(v4);
                self.v4.iter().any(|&(net, mask)| ip & mask == net)
            }
            IpAddr::V6(v6) => {
                let ip = u128::from(v6);
                self.v6.iter().any(|&(net, mask)| ip & mask == net)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_networks_contain_their_addresses_only() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.7")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        let host = cidr("192.0.2.7");
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.8")));
    }

    #[test]
    fn v6_networks_contain_their_addresses_only() {
        let net = cidr("2001:db8::/32");
        assert!(net.contains(ip("2001:db8::1")));
        assert!(net.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!net.contains(ip("2001:db9::")));
        assert!(!net.contains(ip("10.0.0.1")));
        assert!(cidr("::/0").contains(ip("::1")));
        assert!(cidr("::1").contains(ip("::1")));
        assert!(!cidr("::1").contains(ip("::2")));
        assert!(cidr("2001:db8::/127").contains(ip("2001:db8::1")));
        assert!(!cidr("2001:db8::/128").contains(ip("2001:db8::1")));
    }

    #[test]
    fn v4_mapped_addresses_and_networks_are_ipv4() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::ffff:11.1.2.3")));
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert_eq!(mapped, net);
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert_eq!(cidr("::ffff:192.0.2.1"), cidr("192.0.2.1/32"));
        let mut set = CidrSet::default();
        set.push(net);
        assert!(set.contains(ip("::ffff:10.9.9.9")));
        assert!(
            !set.contains(ip("::a00:1")),
            "IPv4-compatible is not mapped"
        );
    }

    #[test]
    fn malformed_networks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "10.0.0.0/+8",
            "10.0.0/8",
            "host",
            "2001:db8::/129",
            "2001:db8::1/32",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
            "[::1]/128",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn overlap_is_containment() {
        assert!(cidr("10.0.0.0/8").overlaps(&cidr("10.1.0.0/16")));
        assert!(cidr("10.1.0.0/16").overlaps(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.1.0.0/16").overlaps(&cidr("10.2.0.0/16")));
        assert!(!cidr("10.0.0.0/8").overlaps(&cidr("::/0")));
    }
}
