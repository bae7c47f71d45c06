//! [`Rule`]: one allow or deny line, and its checked, compiled form.

use http::Method;

use super::cidr::{Cidr, CidrSet};
use crate::canonical::{self, PathOptions};
use crate::ConfigError;

/// What a matching rule (or the default) does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Pass the request on.
    #[default]
    Allow,
    /// Answer `403 Forbidden` (or only count and log it, in a dry run).
    Deny,
}

/// One line of an access list: an [`Action`] and the conditions a request must meet for it.
///
/// Every condition given must hold (AND); a condition given several values holds when any of
/// them does (OR); a rule with no condition matches every request. Values are checked by
/// [`AclBuilder::build`](super::AclBuilder::build), which names the field and value of the
/// first one that is wrong.
///
/// ```
/// use http::Method;
/// use middlewares::acl::Rule;
///
/// // nginx: `location /admin { allow 10.0.0.0/8; deny all; }` is these two lines, in order.
/// let rules = [
///     Rule::allow().ip("10.0.0.0/8").path_prefix("/admin"),
///     Rule::deny().path_prefix("/admin"),
/// ];
/// // Writes from one network only.
/// let writes = Rule::deny().method(Method::DELETE).method(Method::PUT).ip("0.0.0.0/0").ip("::/0");
/// # let _ = (rules, writes);
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) action: Action,
    pub(super) ips: Vec<String>,
    pub(super) paths: Vec<String>,
    pub(super) methods: Vec<Method>,
    pub(super) hosts: Vec<String>,
}

impl Rule {
    /// A rule that allows what it matches (matches everything until conditions are added).
    pub fn allow() -> Self {
        Rule::new(Action::Allow)
    }

    /// A rule that denies what it matches (matches everything until conditions are added).
    pub fn deny() -> Self {
        Rule::new(Action::Deny)
    }

    /// A rule with this action and no condition yet.
    pub fn new(action: Action) -> Self {
        Rule {
            action,
            ips: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            hosts: Vec::new(),
        }
    }

    /// Matches clients in this network (`192.0.2.0/24`, `2001:db8::/32`) or with this address
    /// (`192.0.2.7`, a /32 or /128). The client is the socket peer, or the address found in
    /// `X-Forwarded-For` behind [trusted proxies](super::AclBuilder::trusted_proxies).
    pub fn ip(mut self, network: impl Into<String>) -> Self {
        self.ips.push(network.into());
        self
    }

    /// Matches request paths under this prefix, by whole segments (`/admin` matches `/admin`
    /// and `/admin/users`, not `/administrator`), compared with the request's canonical path
    /// (see the [module docs](super#paths)). The prefix must be canonical itself.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.paths.push(prefix.into());
        self
    }

    /// Matches requests with this method.
    pub fn method(mut self, method: Method) -> Self {
        self.methods.push(method);
        self
    }

    /// Matches requests for this host name: exact (`admin.example.com`) or every subdomain
    /// (`*.example.com`, not `example.com` itself), case-insensitively, port ignored.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// What the rule does when it matches.
    pub fn action(&self) -> Action {
        self.action
    }
}

/// A host condition, lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Exact(Box<str>),
    /// `*.example.com` stored as `.example.com`.
    Suffix(Box<str>),
}

impl HostPattern {
    /// `host` is a canonical host name (lowercase, no port).
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == &**name,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }
}

/// A checked [`Rule`]. An empty condition list means "any".
#[derive(Debug, Clone)]
pub(super) struct CompiledRule {
    pub(super) action: Action,
    pub(super) ips: CidrSet,
    /// Canonical, without a trailing `/` (`/` itself stays).
    pub(super) paths: Box<[Box<str>]>,
    pub(super) methods: Box<[Method]>,
    pub(super) hosts: Box<[HostPattern]>,
}

impl CompiledRule {
    /// Checks `rule` (number `index` in the list, for error messages).
    pub(super) fn compile(rule: &Rule, index: usize) -> Result<Self, ConfigError> {
        let mut ips = CidrSet::default();
        for text in &rule.ips {
            let cidr: Cidr = text.parse().map_err(|e: super::cidr::InvalidCidr| {
                ConfigError::with_value_text("acl.rule.ip", e.to_string(), at(text, index))
            })?;
            ips.push(cidr);
        }
        let paths = rule
            .paths
            .iter()
            .map(|p| compile_prefix(p, index))
            .collect::<Result<_, _>>()?;
        let hosts = rule
            .hosts
            .iter()
            .map(|h| compile_host(h, index))
            .collect::<Result<_, _>>()?;
        Ok(CompiledRule {
            action: rule.action,
            ips,
            paths,
            methods: rule.methods.clone().into_boxed_slice(),
            hosts,
        })
    }

    pub(super) fn needs_ip(&self) -> bool {
        !self.ips.is_empty()
    }

    pub(super) fn needs_path(&self) -> bool {
        !self.paths.is_empty()
    }

    pub(super) fn needs_host(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// Whether only the client address decides this rule (what the accept-time filter can
    /// act on).
    pub(super) fn ip_only(&self) -> bool {
        self.paths.is_empty() && self.methods.is_empty() && self.hosts.is_empty()
    }

    pub(super) fn method_matches(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    pub(super) fn path_matches(&self, path: &str, ignore_case: bool) -> bool {
        self.paths
            .iter()
            .any(|prefix| prefix_matches(prefix, path, ignore_case))
    }

    /// `host`: the canonical host name, `None` when the request named none.
    pub(super) fn host_matches(&self, host: Option<&str>) -> bool {
        host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)))
    }
}

/// `"value" (rule N)`, for a config error.
fn at(value: &str, index: usize) -> String {
    format!("{value:?} (rule {index})")
}

fn compile_prefix(prefix: &str, index: usize) -> Result<Box<str>, ConfigError> {
    const FIELD: &str = "acl.rule.path_prefix";
    if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
        return Err(ConfigError::with_value_text(
            FIELD,
            "a path starting with '/', without '?' or '#'",
            at(prefix, index),
        ));
    }
    // Requests are compared in canonical form, slashes merged: a prefix in any other spelling
    // would never match.
    let options = acl_path_options();
    match canonical::path(prefix, options) {
        Ok(p) if p == prefix => {}
        Ok(p) => {
            return Err(ConfigError::with_value_text(
                FIELD,
                format!("in canonical form ({p:?})"),
                at(prefix, index),
            ))
        }
        Err(why) => {
            return Err(ConfigError::with_value_text(
                FIELD,
                format!("a readable path ({why})"),
                at(prefix, index),
            ))
        }
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.into())
}

fn compile_host(host: &str, index: usize) -> Result<HostPattern, ConfigError> {
    const FIELD: &str = "acl.rule.host";
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (host, false),
    };
    let bad = |why: &str| {
        ConfigError::with_value_text(
            FIELD,
            format!("a host name or *.name ({why})"),
            at(host, index),
        )
    };
    let authority = canonical::authority(name.as_bytes()).map_err(|e| bad(e.0))?;
    if authority.name().len() != authority.as_str().len() {
        return Err(bad("no port"));
    }
    let name = authority.name().to_owned();
    Ok(if wildcard {
        HostPattern::Suffix(format!(".{name}").into())
    } else {
        HostPattern::Exact(name.into())
    })
}

/// How the ACL canonicalises request paths: the shared rules, and runs of `/` merged always,
/// so `//admin` meets a rule on `/admin` whatever the server behind does with `//`.
pub(super) fn acl_path_options() -> PathOptions {
    PathOptions {
        merge_slashes: true,
    }
}

/// Whether `path` starts with the whole segments of `prefix`.
fn prefix_matches(prefix: &str, path: &str, ignore_case: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let Some(head) = path.as_bytes().get(..prefix.len()) else {
        return false;
    };
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix.as_bytes())
    } else {
        head == prefix.as_bytes()
    };
    same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/admin", "/admin", false));
        assert!(prefix_matches("/admin", "/admin/", false));
        assert!(prefix_matches("/admin", "/admin/users", false));
        assert!(!prefix_matches("/admin", "/administrator", false));
        assert!(!prefix_matches("/admin", "/ADMIN", false));
        assert!(prefix_matches("/admin", "/ADMIN/x", true));
        assert!(!prefix_matches("/admin", "/adm", false));
        assert!(prefix_matches("/", "/anything", false));
    }

    #[test]
    fn prefixes_must_be_canonical() {
        let err = |p: &str| compile_prefix(p, 3).unwrap_err().to_string();
        assert_eq!(
            err("/a/../admin"),
            "acl.rule.path_prefix must be in canonical form (\"/admin\"), got \"/a/../admin\" (rule 3)"
        );
        assert!(err("admin").contains("starting with '/'"));
        assert!(err("//admin").contains("\"/admin\""));
        assert!(err("/%61dmin").contains("\"/admin\""));
        assert!(err("/a%2Fb").contains("encoded '/'"));
        assert_eq!(&*compile_prefix("/admin/", 0).unwrap(), "/admin");
        assert_eq!(&*compile_prefix("/", 0).unwrap(), "/");
    }

    #[test]
    fn hosts_are_canonical_names() {
        assert_eq!(
            compile_host("Admin.Example.COM.", 0).unwrap(),
            HostPattern::Exact("admin.example.com".into())
        );
        assert_eq!(
            compile_host("*.example.com", 0).unwrap(),
            HostPattern::Suffix(".example.com".into())
        );
        assert!(compile_host("a.example.com:8080", 0).is_err());
        assert!(compile_host("a b", 0).is_err());
        let pattern = compile_host("*.example.com", 0).unwrap();
        assert!(pattern.matches("a.example.com"));
        assert!(!pattern.matches("example.com"));
        assert!(!pattern.matches("aexample.com"));
    }

    #[test]
    fn ip_errors_name_field_value_and_rule() {
        let rule = Rule::deny().ip("10.0.0.1/8");
        let err = CompiledRule::compile(&rule, 2).unwrap_err();
        assert_eq!(err.field(), "acl.rule.ip");
        assert_eq!(
            err.to_string(),
            "acl.rule.ip must be a network address with the bits past the prefix length zero, got \"10.0.0.1/8\" (rule 2)"
        );
    }
}
