//! The canonical request target: one spelling of the `Host` and of the path, computed before
//! routing, so that routes (and any access rule keyed on them) see what the upstream sees.
//!
//! This is the one canonicaliser of the workspace: `pingora-tower`'s router and the
//! `acl` layer (in both hosts, so an axum app behind it too) call it, and so can a
//! user's own layer that decides on the path or the host.
//!
//! Two requests that a backend would treat as the same resource must route the same way,
//! and a request the proxy cannot read unambiguously is refused (`400`) rather than passed on
//! for the backend to read differently.
//!
//! # Host
//! The host is parsed as an RFC 3986 authority, `host [":" port]`:
//! - `host` is a name of letters, digits, `-`, `_` and `.` (DNS names, with the `_` found in
//!   service names; the other RFC 3986 reg-name characters, the sub-delimiters and `%`
//!   escapes, occur in no DNS name and no route pattern, so they are refused), with no empty
//!   label; an IPv4 literal is such a name. Or a bracketed IPv6 literal (`[::1]`, no zone,
//!   no `IPvFuture`).
//! - Letters are folded to lowercase, one trailing dot is dropped (`Example.COM.` →
//!   `example.com`), and an IPv6 literal is written in its standard compressed form.
//! - `port` is decimal, `1..=65535`, written without leading zeros. An empty port (`host:`)
//!   means no port (RFC 3986 §6.2.3) and is dropped; port `0` is refused (nothing listens
//!   there, so such a Host is a probe).
//! - Anything else (`/`, `@`, `\`, spaces, `%`, a second `:`, text after the port) is refused.
//!
//! # Path
//! The path is normalised like Envoy's `normalize_path` (RFC 3986 §6.2.2):
//! - `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!   escapes have their hex digits upper-cased (`%3f` → `%3F`); a `%` not followed by two hex
//!   digits is refused.
//! - Dot segments are removed after that decoding (RFC 3986 §5.2.4), so `/api/../admin` and
//!   `/api/%2e%2e/admin` both become `/admin`; `..` never climbs above the root.
//! - Encoded `/` (`%2F`), `\` (`%5C`) and NUL (`%00`) are refused, as is a raw `\`: backends
//!   disagree on whether they separate segments (Windows servers and some frameworks read `\`
//!   as `/`), so a prefix decided on one reading could be bypassed on the other. This is
//!   Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST`.
//! - Runs of `/` are kept unless [`PathOptions::merge_slashes`] is set (Envoy's
//!   `merge_slashes`, off by default there too): `//` is a distinct path to most servers.
//! - The query string is not part of the path and is kept byte for byte.
//!
//! Most paths are canonical already: one scan proves it and the input is returned borrowed;
//! a new string is built only when something changes.
//!
//! Path segments are compared byte for byte afterwards, so paths stay case-sensitive.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Why a host or path was refused; the proxy answers `400` and logs this text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected(
    /// What was wrong, in a few words (`"encoded '/' (%2F) in path"`).
    pub &'static str,
);

impl std::error::Error for Rejected {}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A canonical authority: `name` or `name:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    text: Cow<'a, str>,
    name_len: usize,
}

impl<'a> Authority<'a> {
    /// The host name without the port, as routes match it (an IPv6 literal keeps its
    /// brackets).
    pub fn name(&self) -> &str {
        &self.text[..self.name_len]
    }

    /// The whole canonical authority, port included: what the upstream's `Host` and
    /// `X-Forwarded-Host` carry.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the canonical text differs from what was received.
    pub fn changed(&self) -> bool {
        matches!(self.text, Cow::Owned(_))
    }
}

/// Parses a `Host` value or a request-target authority (see the module docs).
pub fn authority(raw: &[u8]) -> Result<Authority<'_>, Rejected> {
    if raw.first() == Some(&b'[') {
        return bracketed(raw);
    }
    // One pass over the name: classify each byte, stop at the port separator.
    let mut upper = false;
    let mut previous = b'.';
    let mut name_end = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            b'.' if previous == b'.' => return Err(Rejected("empty label in host")),
            b'.' => {}
            b':' => {
                name_end = i;
                break;
            }
            _ => return Err(Rejected("host has a character not allowed in a host name")),
        }
        previous = b;
    }
    if name_end == 0 {
        return Err(Rejected("empty host"));
    }
    // `..` was refused above, so a final dot follows a label.
    let trailing_dot = previous == b'.';
    // Every byte up to here is ASCII; the port is checked below.
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(Rejected("host is not ASCII"));
    };
    let name = &text[..name_end - usize::from(trailing_dot)];
    let port = match text[name_end..].strip_prefix(':') {
        None => None,
        Some("") => Some(PortText::Dropped),
        Some(port) => Some(parse_port(port)?),
    };
    let port_changed = !matches!(port, None | Some(PortText::Canonical(_)));
    if !upper && !trailing_dot && !port_changed {
        return Ok(Authority {
            text: Cow::Borrowed(text),
            name_len: name.len(),
        });
    }
    Ok(assemble(Cow::Owned(name.to_ascii_lowercase()), port))
}

/// `[IPv6]` with an optional port.
fn bracketed(raw: &[u8]) -> Result<Authority<'_>, Rejected> {
    let Ok(raw) = std::str::from_utf8(raw) else {
        return Err(Rejected("host is not ASCII"));
    };
    let (host, port) = split_port(raw)?;
    let port = match port {
        None => None,
        Some("") => Some(PortText::Dropped),
        Some(port) => Some(parse_port(port)?),
    };
    let (name, name_changed) = ipv6_literal(host)?;
    let port_changed = !matches!(port, None | Some(PortText::Canonical(_)));
    if !name_changed && !port_changed {
        return Ok(Authority {
            text: Cow::Borrowed(raw),
            name_len: name.len(),
        });
    }
    Ok(assemble(name, port))
}

fn assemble(name: Cow<'_, str>, port: Option<PortText<'_>>) -> Authority<'static> {
    let mut text = name.into_owned();
    let name_len = text.len();
    match port {
        Some(PortText::Canonical(p)) => {
            text.push(':');
            text.push_str(p);
        }
        Some(PortText::Renumbered(p)) => {
            text.push(':');
            text.push_str(&p.to_string());
        }
        Some(PortText::Dropped) | None => {}
    }
    Authority {
        text: Cow::Owned(text),
        name_len,
    }
}

enum PortText<'a> {
    /// Already canonical.
    Canonical(&'a str),
    /// Had leading zeros.
    Renumbered(u16),
    /// Empty (`host:`).
    Dropped,
}

/// Splits `[v6][:port]`, leaving the brackets on the host.
fn split_port(raw: &str) -> Result<(&str, Option<&str>), Rejected> {
    let Some(close) = raw.find(']') else {
        return Err(Rejected("unclosed IPv6 literal in host"));
    };
    let (host, rest) = raw.split_at(close + 1);
    match rest.strip_prefix(':') {
        Some(port) => Ok((host, Some(port))),
        None if rest.is_empty() => Ok((host, None)),
        None => Err(Rejected("text after the IPv6 literal in host")),
    }
}

fn parse_port(port: &str) -> Result<PortText<'_>, Rejected> {
    const BAD: Rejected = Rejected("host port is not a number from 1 to 65535");
    if port.len() > 5 {
        return Err(BAD);
    }
    let mut n: u32 = 0;
    for b in port.bytes() {
        if !b.is_ascii_digit() {
            return Err(BAD);
        }
        n = n * 10 + u32::from(b - b'0');
    }
    match u16::try_from(n) {
        Ok(0) | Err(_) => Err(BAD),
        Ok(n) if port.starts_with('0') => Ok(PortText::Renumbered(n)),
        Ok(_) => Ok(PortText::Canonical(port)),
    }
}

/// `[v6]`: parsed, then written in the standard form. Returns the text and whether it changed.
fn ipv6_literal(host: &str) -> Result<(Cow<'_, str>, bool), Rejected> {
    let inner = &host[1..host.len() - 1];
    let Ok(addr) = inner.parse::<Ipv6Addr>() else {
        return Err(Rejected("host is not a valid IPv6 literal"));
    };
    let canonical = format!("[{addr}]");
    if canonical == host {
        Ok((Cow::Borrowed(host), false))
    } else {
        Ok((Cow::Owned(canonical), true))
    }
}

/// Path normalisation switches (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathOptions {
    /// Collapse runs of `/` into one.
    pub merge_slashes: bool,
}

/// The canonical form of an origin-form path (no query). Borrowed when `path` is already
/// canonical. `*` (the asterisk-form of `OPTIONS *`) is returned as is.
pub fn path(path: &str, options: PathOptions) -> Result<Cow<'_, str>, Rejected> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(Rejected("path does not start with '/'"));
    }
    if is_canonical(path.as_bytes(), options)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    let mut out = remove_dot_segments(&decoded);
    if options.merge_slashes {
        out = merge_slashes(&out);
    }
    Ok(Cow::Owned(out))
}

/// Bytes the path scan stops at: `/` (a segment may start with a dot or be empty), `%`, `\\`.
const PATH_STOP: [bool; 256] = {
    let mut table = [false; 256];
    table[b'/' as usize] = true;
    table[b'%' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// One scan: `Ok(true)` when nothing would change, an error for what is refused anyway.
fn is_canonical(path: &[u8], options: PathOptions) -> Result<bool, Rejected> {
    let mut canonical = true;
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        i += 1;
        if !PATH_STOP[usize::from(b)] {
            continue;
        }
        match b {
            b'/' => {
                // The segment starting at `i`: `.`, `..`, or empty when merging.
                let rest = &path[i..];
                let dots = match rest {
                    [b'.', b'.', ..] => 2,
                    [b'.', ..] => 1,
                    [b'/', ..] if options.merge_slashes => {
                        canonical = false;
                        0
                    }
                    _ => 0,
                };
                if dots > 0 && matches!(rest.get(dots), None | Some(b'/')) {
                    canonical = false;
                }
            }
            b'%' => {
                let byte = escaped_byte(path, i - 1)?;
                check_escape(byte)?;
                if is_unreserved(byte) || path[i..i + 2].iter().any(u8::is_ascii_lowercase) {
                    canonical = false;
                }
                i += 2;
            }
            _ => return Err(Rejected("backslash in path")),
        }
    }
    Ok(canonical)
}

/// The byte a `%XX` at `at` encodes.
fn escaped_byte(path: &[u8], at: usize) -> Result<u8, Rejected> {
    let hex = |b: Option<&u8>| match b {
        Some(b @ b'0'..=b'9') => Some(b - b'0'),
        Some(b @ b'a'..=b'f') => Some(b - b'a' + 10),
        Some(b @ b'A'..=b'F') => Some(b - b'A' + 10),
        _ => None,
    };
    match (hex(path.get(at + 1)), hex(path.get(at + 2))) {
        (Some(high), Some(low)) => Ok(high << 4 | low),
        _ => Err(Rejected("'%' not followed by two hex digits in path")),
    }
}

fn check_escape(byte: u8) -> Result<(), Rejected> {
    match byte {
        b'/' => Err(Rejected("encoded '/' (%2F) in path")),
        b'\\' => Err(Rejected("encoded '\\' (%5C) in path")),
        0 => Err(Rejected("encoded NUL (%00) in path")),
        _ => Ok(()),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes and upper-cases the others (the path was checked already).
fn decode(path: &str) -> Result<String, Rejected> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = escaped_byte(bytes, i)?;
            check_escape(byte)?;
            if is_unreserved(byte) {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            let start = i;
            while i < bytes.len() && bytes[i] != b'%' {
                i += 1;
            }
            out.push_str(&path[start..i]);
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => out.truncate(out.rfind('/').unwrap_or(0)),
            _ => {
                out.push('/');
                out.push_str(segment);
                continue;
            }
        }
        // A final `.` or `..` leaves the path ending in a directory.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c != '/' || !out.ends_with('/') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(raw: &str) -> Result<(String, String, bool), Rejected> {
        authority(raw.as_bytes()).map(|a| (a.as_str().to_owned(), a.name().to_owned(), a.changed()))
    }

    #[test]
    fn canonical_hosts_are_borrowed() {
        for raw in [
            "a.example.com",
            "a.example.com:8080",
            "127.0.0.1:80",
            "[::1]:443",
            "x_y-z",
        ] {
            let a = authority(raw.as_bytes()).unwrap();
            assert_eq!(a.as_str(), raw);
            assert!(!a.changed(), "{raw}");
        }
        assert_eq!(authority(b"a.test:81").unwrap().name(), "a.test");
        assert_eq!(authority(b"[::1]:81").unwrap().name(), "[::1]");
    }

    #[test]
    fn hosts_are_case_folded_and_trimmed() {
        let ok = |raw, text: &str, name: &str| {
            assert_eq!(
                host(raw),
                Ok((text.to_owned(), name.to_owned(), true)),
                "{raw}"
            )
        };
        ok("A.Example.COM", "a.example.com", "a.example.com");
        ok("a.example.com.", "a.example.com", "a.example.com");
        ok("A.example.com.:8443", "a.example.com:8443", "a.example.com");
        ok("a.test:", "a.test", "a.test");
        ok("a.test:0080", "a.test:80", "a.test");
        ok("[0:0::1]:80", "[::1]:80", "[::1]");
        ok("[::ABCD]", "[::abcd]", "[::abcd]");
    }

    #[test]
    fn malformed_hosts_are_refused() {
        for raw in [
            "",
            ".",
            "attacker.net/.example.com",
            "a.example.com:junk",
            "a.example.com:80:80",
            "a.example.com:0",
            "a.example.com:65536",
            "a.example.com:123456",
            "user@a.example.com",
            "a\\b.example.com",
            "a b.example.com",
            "a%2eexample.com",
            "a..example.com",
            ".example.com",
            "a.example.com..",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            "[v1.x]",
            "[1.2.3.4]",
            "::1",
            "a.example.com:+80",
            "é.test",
        ] {
            assert!(host(raw).is_err(), "{raw:?} accepted as {:?}", host(raw));
        }
        assert!(authority(b"\xff.test").is_err());
    }

    fn canon(raw: &str) -> Result<String, Rejected> {
        path(raw, PathOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for raw in [
            "/",
            "/api",
            "/api/",
            "/a//b",
            "/a/.b/..c/...",
            "/%3F%20",
            "/a;b=c",
            "*",
        ] {
            assert!(
                matches!(path(raw, PathOptions::default()), Ok(Cow::Borrowed(p)) if p == raw),
                "{raw}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        for (raw, expected) in [
            ("/api/../admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2e/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/.", "/"),
            ("/a//../b", "/a/b"),
            ("/a/b/../../../c/", "/c/"),
        ] {
            assert_eq!(canon(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn escapes_are_normalised() {
        for (raw, expected) in [
            ("/%41", "/A"),
            ("/%7e%5f%2D", "/~_-"),
            ("/a%3fb", "/a%3Fb"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/%25", "/%25"),
            ("/%2541", "/%2541"),
        ] {
            assert_eq!(canon(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a%5cb",
            "/a%00",
            "/a\\b",
            "/a%",
            "/a%4",
            "/a%zz",
            "/%2e%2e%2f",
            "api",
            "",
        ] {
            assert!(canon(raw).is_err(), "{raw:?} accepted as {:?}", canon(raw));
        }
    }

    #[test]
    fn merging_slashes_is_a_switch() {
        let merge = PathOptions {
            merge_slashes: true,
        };
        assert_eq!(path("//a//b//", merge).unwrap(), "/a/b/");
        assert_eq!(path("/a//../b", merge).unwrap(), "/a/b");
        assert!(matches!(path("/a/b/", merge), Ok(Cow::Borrowed(_))));
        assert_eq!(canon("//a//b").unwrap(), "//a//b");
    }
}
