//! [`Route`]: which requests go to which [`Upstream`], by host and path prefix; compiled at
//! `build()` into a [`RouteTable`] that matches without allocating.

use super::error::{ProxyConfigError, RouteName};
use super::upstream::Upstream;
use middlewares::canonical::{self, PathOptions};

/// Sends the requests that match a host and/or a path prefix to an [`Upstream`].
///
/// Requests are matched by their canonical host and path (see "Canonical request target"
/// below); matching, precomputed at `build()`:
/// - **Host** (an absolute-form target's authority, else the `Host` header, else the URI
///   authority for HTTP/2) is compared case-insensitively with the port ignored.
///   `"api.example.com"` matches that name exactly;
///   `"*.example.com"` matches any name that ends in `.example.com` with at least one label in
///   front (`a.example.com`, `a.b.example.com`, not `example.com`). A route without a host
///   matches every host.
/// - **Prefix** matches whole path segments: `"/api"` matches `/api`, `/api/` and `/api/x`, not
///   `/apix`. A trailing `/` in the prefix is ignored (`"/api/"` is `"/api"`); `"/"` (the
///   default) matches every path. The query string is not part of the path. Prefixes are
///   **case-sensitive**, like nginx `location` and Envoy `prefix` (`"/api"` does not match
///   `/API`): paths are case-sensitive on most servers. A prefix must itself be canonical
///   (no `.`/`..` segments, no escapes of unreserved characters, other escapes in
///   upper case: `%3F`, not `%3f`); `build()` names any other.
/// - **Precedence**: hosts are tried from the most specific (exact names, then wildcards with the
///   longest suffix first, then routes without a host); within the first host that has a
///   matching prefix, the longest prefix wins. So `Route::host("api.example.com", a)
///   .with_prefix("/v2")` plus `Route::prefix("/", b)` sends `api.example.com/v2/x` to `a` and
///   `api.example.com/other` to `b`.
/// - No match: the proxy answers `404` itself and contacts no upstream.
///
/// # Canonical request target
/// Before matching, the proxy brings the host and path to one spelling, refusing with `400`
/// what it cannot read unambiguously, and the upstream receives what was matched:
/// - host: an authority (`name[:port]`, or `[IPv6][:port]`) of letters, digits, `-`, `_`,
///   `.`; lowercased, one trailing dot dropped (`API.Example.COM.` routes and is forwarded as
///   `api.example.com`). `Host: attacker.net/.example.com` or `a.example.com:junk` is a `400`,
///   as is an HTTP/1.1 request with no host at all;
/// - path: escapes of unreserved characters decoded (`%41` → `A`), dot segments removed
///   (`/api/../admin` and `/api/%2e%2e/admin` route, and reach the upstream, as `/admin`),
///   `%2F`, `%5C`, `%00` and a raw `\` refused; `//` kept unless
///   [`merge_slashes`](super::ProxyBuilder::merge_slashes) is on.
///
/// # Example
/// ```
/// use pingora_tower::proxy::{Route, Upstream};
///
/// let routes = vec![
///     Route::prefix("/", Upstream::new("http://127.0.0.1:9000")),
///     Route::prefix("/api", Upstream::new("http://127.0.0.1:9001")),
///     Route::host("*.example.com", Upstream::new("http://127.0.0.1:9002")),
///     Route::host("api.example.com", "http://127.0.0.1:9003").with_prefix("/v2"),
/// ];
/// # let _ = routes;
/// ```
#[derive(Debug, Clone)]
pub struct Route {
    host: Option<String>,
    prefix: String,
    upstream: Upstream,
}

impl Route {
    /// Requests whose path starts with the segments of `prefix`, whatever their host.
    pub fn prefix(prefix: impl Into<String>, upstream: impl Into<Upstream>) -> Self {
        Route {
            host: None,
            prefix: prefix.into(),
            upstream: upstream.into(),
        }
    }

    /// Requests for `host` (exact, or `*.suffix` wildcard), whatever their path.
    pub fn host(host: impl Into<String>, upstream: impl Into<Upstream>) -> Self {
        Route {
            host: Some(host.into()),
            prefix: "/".to_owned(),
            upstream: upstream.into(),
        }
    }

    /// Also requires this path prefix (for a route made with [`Route::host`]).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Also requires this host (for a route made with [`Route::prefix`]).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The upstream this route sends to.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The route's name in metrics and logs (`http_route`): its host, if any, then its prefix
    /// (`/api`, `api.example.com/v2`).
    pub fn label(&self) -> String {
        format!("{}{}", self.host.as_deref().unwrap_or(""), self.prefix)
    }

    pub(crate) fn name(&self) -> RouteName {
        RouteName {
            host: self.host.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Lowercase name.
    Exact(String),
    /// Lowercase suffix including the leading dot: `.example.com`.
    Suffix(String),
    Any,
}

impl HostPattern {
    fn parse(host: Option<&str>) -> Result<Self, String> {
        let Some(host) = host else {
            return Ok(HostPattern::Any);
        };
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        if let Some(suffix) = host.strip_prefix("*.") {
            if valid(suffix) {
                return Ok(HostPattern::Suffix(format!(".{suffix}")));
            }
        } else if valid(&host) {
            return Ok(HostPattern::Exact(host));
        }
        Err(format!(
            "host {host:?} is not a host name or a *.suffix wildcard"
        ))
    }

    /// Lower sorts first: exact names, then longer wildcard suffixes, then any host.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(_) => (0, 0),
            HostPattern::Suffix(s) => (1, usize::MAX - s.len()),
            HostPattern::Any => (2, 0),
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (_, None) => false,
            (HostPattern::Exact(name), Some(h)) => h.eq_ignore_ascii_case(name),
            (HostPattern::Suffix(suffix), Some(h)) => {
                h.len() > suffix.len()
                    && h.as_bytes()[h.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

fn normalize_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?} must start with '/'"));
    }
    if prefix.contains(['?', '#']) {
        return Err(format!("prefix {prefix:?} must not contain '?' or '#'"));
    }
    // Requests are matched by their canonical path: a prefix in any other spelling would
    // never match.
    match canonical::path(prefix, PathOptions::default()) {
        Ok(p) if p == prefix => {}
        Ok(p) => {
            return Err(format!(
                "prefix {prefix:?} is not in canonical form (write it as {p:?})"
            ))
        }
        Err(why) => return Err(format!("prefix {prefix:?} is refused: {why}")),
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// Whether `path` starts with the whole segments of `prefix` (normalized, see [`Route`]).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

#[derive(Debug)]
struct HostRule {
    pattern: HostPattern,
    /// (normalized prefix, route index), longest prefix first.
    prefixes: Vec<(String, usize)>,
}

/// The compiled routes: host rules in precedence order, each with its prefixes longest first.
#[derive(Debug)]
pub(crate) struct RouteTable {
    hosts: Vec<HostRule>,
    /// Whether some route names a host (otherwise the host plays no part in `find`).
    names_hosts: bool,
}

impl RouteTable {
    /// Validates `routes` and orders them for matching. Route `i` resolves to index `i`.
    pub(crate) fn build(routes: &[Route]) -> Result<Self, ProxyConfigError> {
        let mut hosts: Vec<HostRule> = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let invalid = |reason| ProxyConfigError::InvalidRoute {
                route: route.name(),
                reason,
            };
            let pattern = HostPattern::parse(route.host.as_deref()).map_err(invalid)?;
            let prefix = normalize_prefix(&route.prefix).map_err(invalid)?;
            let position = hosts.iter().position(|r| r.pattern == pattern);
            let rule_index = position.unwrap_or_else(|| {
                hosts.push(HostRule {
                    pattern,
                    prefixes: Vec::new(),
                });
                hosts.len() - 1
            });
            let rule = &mut hosts[rule_index];
            if rule.prefixes.iter().any(|(p, _)| *p == prefix) {
                return Err(invalid(
                    "another route has the same host and prefix".to_owned(),
                ));
            }
            rule.prefixes.push((prefix, index));
        }
        for rule in &mut hosts {
            rule.prefixes
                .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        }
        hosts.sort_by_key(|r| r.pattern.rank());
        let names_hosts = hosts
            .iter()
            .any(|rule| !matches!(rule.pattern, HostPattern::Any));
        Ok(RouteTable { hosts, names_hosts })
    }

    /// Whether some route names a host: otherwise the host plays no part in [`find`](Self::find).
    pub(crate) fn names_hosts(&self) -> bool {
        self.names_hosts
    }

    /// The index of the route for this canonical host (name only, no port) and canonical path.
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.hosts
            .iter()
            .filter(|rule| rule.pattern.matches(host))
            .find_map(|rule| {
                rule.prefixes
                    .iter()
                    .find(|(prefix, _)| prefix_matches(prefix, path))
                    .map(|(_, index)| *index)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(Option<&str>, &str)]) -> RouteTable {
        let routes: Vec<Route> = routes
            .iter()
            .map(|(host, prefix)| {
                let r = Route::prefix(*prefix, "http://127.0.0.1:1");
                match host {
                    Some(h) => r.with_host(*h),
                    None => r,
                }
            })
            .collect();
        RouteTable::build(&routes).unwrap()
    }

    #[test]
    fn only_routes_with_a_host_name_hosts() {
        assert!(!table(&[(None, "/a"), (None, "/")]).names_hosts());
        assert!(table(&[(None, "/"), (Some("a.example.com"), "/")]).names_hosts());
        assert!(table(&[(Some("*.example.com"), "/")]).names_hosts());
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(&[(None, "/"), (None, "/api"), (None, "/api/v2/")]);
        assert_eq!(t.find(None, "/"), Some(0));
        assert_eq!(t.find(None, "/apix"), Some(0));
        assert_eq!(t.find(None, "/api"), Some(1));
        assert_eq!(t.find(None, "/api/"), Some(1));
        assert_eq!(t.find(None, "/api/v2"), Some(2));
        assert_eq!(t.find(None, "/api/v2/users"), Some(2));
        assert_eq!(t.find(None, "/api/v20"), Some(1));
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let t = table(&[
            (None, "/"),
            (Some("*.example.com"), "/"),
            (Some("API.example.com"), "/v2"),
            (Some("*.b.example.com"), "/"),
        ]);
        assert_eq!(t.find(Some("api.EXAMPLE.com"), "/v2/x"), Some(2));
        assert_eq!(t.find(Some("api.example.com"), "/other"), Some(1));
        assert_eq!(t.find(Some("x.b.example.com"), "/"), Some(3));
        assert_eq!(t.find(Some("example.com"), "/"), Some(0));
        assert_eq!(t.find(None, "/"), Some(0));
        let t = table(&[(Some("a.test"), "/")]);
        assert_eq!(t.find(Some("b.test"), "/"), None);
        assert_eq!(t.find(None, "/"), None);
    }

    #[test]
    fn rejects_bad_and_duplicate_routes() {
        let bad = |r: Route| RouteTable::build(&[r]).unwrap_err().to_string();
        assert!(bad(Route::prefix("api", "http://127.0.0.1:1")).contains(r#"prefix "api""#));
        assert!(bad(Route::host("a b", "http://127.0.0.1:1")).contains(r#"host "a b""#));
        let dup = RouteTable::build(&[
            Route::prefix("/a", "http://127.0.0.1:1"),
            Route::prefix("/a/", "http://127.0.0.1:2"),
        ]);
        assert!(dup
            .unwrap_err()
            .to_string()
            .contains("same host and prefix"));
    }
}
