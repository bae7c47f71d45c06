//! [`AclLayer`], its builder, and the one decision both hosts call.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::HOST;
use tower_layer::Layer;

use super::cidr::{Cidr, CidrSet};
use super::client::client_ip;
use super::error::{Denied, DenyReason};
use super::rule::{acl_path_options, Action, CompiledRule, Rule};
use super::Acl;
use crate::canonical::{self, Rejected};
use crate::{ConfigError, RequestInfo};

/// An access list: rules checked in order, the first match decides (see the
/// [module docs](super)). Cheap to clone; clones share the counters.
#[derive(Debug, Clone)]
pub struct AclLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    rules: Box<[CompiledRule]>,
    default: Action,
    trusted: CidrSet,
    dry_run: bool,
    ignore_case: bool,
    denied: AtomicU64,
    dry_run_denied: AtomicU64,
    denied_at_accept: AtomicU64,
}

/// What the access list has refused, from [`AclLayer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AclStats {
    /// Requests answered `403` (or `400`).
    pub denied: u64,
    /// Requests a dry run let through that would have been denied.
    pub dry_run_denied: u64,
    /// Connections closed at accept ([`AclLayer::denies_at_accept`] said so and the server
    /// acted on it).
    pub denied_at_accept: u64,
}

/// Configures an [`AclLayer`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone, Default)]
pub struct AclBuilder {
    rules: Vec<Rule>,
    default: Action,
    trusted: Vec<String>,
    dry_run: bool,
    ignore_case: bool,
}

impl AclBuilder {
    /// Appends a rule; rules are checked in the order added.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Appends rules in order.
    pub fn rules(mut self, rules: impl IntoIterator<Item = Rule>) -> Self {
        self.rules.extend(rules);
        self
    }

    /// Appends an allow rule for clients in `network` (nginx `allow network;`).
    pub fn allow_ip(self, network: impl Into<String>) -> Self {
        self.rule(Rule::allow().ip(network))
    }

    /// Appends a deny rule for clients in `network` (nginx `deny network;`).
    pub fn deny_ip(self, network: impl Into<String>) -> Self {
        self.rule(Rule::deny().ip(network))
    }

    /// What happens to a request no rule matches. [`Action::Allow`] by default (as in nginx,
    /// where `deny all;` is written as a last rule).
    pub fn default_action(mut self, action: Action) -> Self {
        self.default = action;
        self
    }

    /// Networks of proxies whose `X-Forwarded-For` is believed (see the
    /// [module docs](super#client-address)). None by default: the socket peer is the client.
    pub fn trusted_proxies<I, T>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.trusted.extend(networks.into_iter().map(Into::into));
        self
    }

    /// Only count ([`AclStats::dry_run_denied`]) and log at warn level what would be denied;
    /// serve everything. Off by default. Nothing is closed at accept in a dry run.
    pub fn dry_run(mut self, enabled: bool) -> Self {
        self.dry_run = enabled;
        self
    }

    /// Compare path prefixes ignoring ASCII case (`/ADMIN` then meets a rule on `/admin`), for
    /// a backend that serves paths case-insensitively. Off by default: paths are
    /// case-sensitive, as in the router and most servers.
    pub fn ignore_path_case(mut self, enabled: bool) -> Self {
        self.ignore_case = enabled;
        self
    }

    /// Checks the rules and networks.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field (`acl.rule.ip`, `acl.rule.path_prefix`,
    /// `acl.rule.host`, `acl.trusted_proxies`) and the value, with its rule's index.
    pub fn build(self) -> Result<AclLayer, ConfigError> {
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| CompiledRule::compile(rule, i))
            .collect::<Result<_, _>>()?;
        let mut trusted = CidrSet::default();
        for text in &self.trusted {
            let cidr: Cidr = text.parse().map_err(|e: super::cidr::InvalidCidr| {
                ConfigError::with_value_text(
                    "acl.trusted_proxies",
                    e.to_string(),
                    format!("{text:?}"),
                )
            })?;
            trusted.push(cidr);
        }
        Ok(AclLayer {
            shared: Arc::new(Shared {
                rules,
                default: self.default,
                trusted,
                dry_run: self.dry_run,
                ignore_case: self.ignore_case,
                denied: AtomicU64::new(0),
                dry_run_denied: AtomicU64::new(0),
                denied_at_accept: AtomicU64::new(0),
            }),
        })
    }
}

impl AclLayer {
    /// A builder with no rules, default action allow, no trusted proxies.
    pub fn builder() -> AclBuilder {
        AclBuilder::default()
    }

    /// What the rules say about this request, without counting or logging (a dry run's
    /// answer too). `peer` is the socket peer when the host knows it (the proxy does);
    /// `None` reads it from the request extensions ([`RequestInfo::connection_ip`]).
    pub fn evaluate(&self, info: &RequestInfo<'_>, peer: Option<IpAddr>) -> Result<(), Denied> {
        let shared = &*self.shared;
        let mut facts = Facts {
            info,
            peer,
            client: None,
            path: None,
            host: None,
        };
        for (i, rule) in shared.rules.iter().enumerate() {
            if !rule.method_matches(info.method) {
                continue;
            }
            if rule.needs_ip() {
                match facts.client(&shared.trusted) {
                    Some(ip) if !rule.ips.contains(ip) => continue,
                    Some(_) => {}
                    // Unknown client: an allow rule cannot vouch for it, a deny rule holds
                    // (fail closed).
                    None if rule.action == Action::Allow => continue,
                    None => {}
                }
            }
            if rule.needs_host() {
                match facts.host() {
                    Ok(host) if !rule.host_matches(host) => continue,
                    Ok(_) => {}
                    Err(why) => return Err(Denied::new(DenyReason::Unreadable(why.0))),
                }
            }
            if rule.needs_path() {
                match facts.path() {
                    Ok(path) if !rule.path_matches(path, shared.ignore_case) => continue,
                    Ok(_) => {}
                    Err(why) => return Err(Denied::new(DenyReason::Unreadable(why.0))),
                }
            }
            return match rule.action {
                Action::Allow => Ok(()),
                Action::Deny => Err(Denied::new(DenyReason::Rule(i))),
            };
        }
        match shared.default {
            Action::Allow => Ok(()),
            Action::Deny => Err(Denied::new(DenyReason::Default)),
        }
    }

    /// [`evaluate`](Self::evaluate), then counts a refusal; in a dry run it also logs it and
    /// lets the request through (`Ok`). Both hosts call this once per request.
    pub fn check(&self, info: &RequestInfo<'_>, peer: Option<IpAddr>) -> Result<(), Denied> {
        let Err(denied) = self.evaluate(info, peer) else {
            return Ok(());
        };
        let shared = &*self.shared;
        if shared.dry_run {
            shared.dry_run_denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                method = %info.method,
                path = info.uri.path(),
                client = ?peer.or_else(|| info.connection_ip()),
                "acl dry run: {denied}"
            );
            return Ok(());
        }
        shared.denied.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(method = %info.method, path = info.uri.path(), "acl: {denied}");
        Err(denied)
    }

    /// Whether a connection from `peer` may be closed as soon as it is accepted: every
    /// request it could send would be denied by its address alone. That is, the first rule
    /// that could match it either looks only at the address and denies, or there is none and
    /// the default denies; a rule that also looks at the path, method or host and allows
    /// keeps the connection. Never in a dry run, and never for a trusted proxy (its clients
    /// are only known from `X-Forwarded-For`).
    ///
    /// Counts a `true` answer in [`AclStats::denied_at_accept`]: call it only when acting on
    /// it (the server's accept filter does).
    pub fn denies_at_accept(&self, peer: IpAddr) -> bool {
        let shared = &*self.shared;
        if shared.dry_run || shared.trusted.contains(peer) {
            return false;
        }
        let denied = self.accept_verdict(peer) == Action::Deny;
        if denied {
            shared.denied_at_accept.fetch_add(1, Ordering::Relaxed);
        }
        denied
    }

    fn accept_verdict(&self, peer: IpAddr) -> Action {
        for rule in self.shared.rules.iter() {
            let ip_holds = !rule.needs_ip() || rule.ips.contains(peer);
            if !ip_holds {
                continue;
            }
            if rule.ip_only() {
                return rule.action;
            }
            // Decided by what the requests say: an allow may admit some of them.
            if rule.action == Action::Allow {
                return Action::Allow;
            }
        }
        self.shared.default
    }

    /// Whether this list can ever close a connection at accept (some address would be
    /// denied by its address alone, and it is not a dry run). Servers skip installing the
    /// filter otherwise.
    pub fn filters_at_accept(&self) -> bool {
        let shared = &*self.shared;
        !shared.dry_run
            && (shared.default == Action::Deny
                || shared
                    .rules
                    .iter()
                    .any(|r| r.action == Action::Deny && r.ip_only()))
    }

    /// Counters of what was refused.
    pub fn stats(&self) -> AclStats {
        let shared = &*self.shared;
        AclStats {
            denied: shared.denied.load(Ordering::Relaxed),
            dry_run_denied: shared.dry_run_denied.load(Ordering::Relaxed),
            denied_at_accept: shared.denied_at_accept.load(Ordering::Relaxed),
        }
    }

    /// Whether this is a dry run.
    pub fn is_dry_run(&self) -> bool {
        self.shared.dry_run
    }
}

impl<S> Layer<S> for AclLayer {
    type Service = Acl<S>;

    fn layer(&self, inner: S) -> Acl<S> {
        Acl::new(inner, self.clone())
    }
}

/// What the rules read from a request, each found the first time a rule needs it.
struct Facts<'r, 'a> {
    info: &'r RequestInfo<'a>,
    peer: Option<IpAddr>,
    client: Option<Option<IpAddr>>,
    path: Option<Result<Cow<'a, str>, Rejected>>,
    host: Option<Result<Option<canonical::Authority<'a>>, Rejected>>,
}

impl<'a> Facts<'_, 'a> {
    fn client(&mut self, trusted: &CidrSet) -> Option<IpAddr> {
        if let Some(client) = self.client {
            return client;
        }
        let peer = self.peer.or_else(|| self.info.connection_ip());
        let client = peer.map(|peer| client_ip(peer, trusted, self.info.headers));
        self.client = Some(client);
        client
    }

    fn path(&mut self) -> Result<&str, Rejected> {
        let info = self.info;
        let path = self
            .path
            .get_or_insert_with(|| canonical::path(info.uri.path(), acl_path_options()));
        match path {
            Ok(path) => Ok(path),
            Err(why) => Err(*why),
        }
    }

    /// The canonical host name (no port), `None` when the request names no host.
    fn host(&mut self) -> Result<Option<&str>, Rejected> {
        let info = self.info;
        let host = self.host.get_or_insert_with(|| {
            // As the router reads it: `Host`, else the target's authority (HTTP/2).
            let raw = info
                .headers
                .get(HOST)
                .map(|h| h.as_bytes())
                .filter(|h| !h.is_empty())
                .or_else(|| info.uri.authority().map(|a| a.as_str().as_bytes()));
            raw.map(canonical::authority).transpose()
        });
        match host {
            Ok(host) => Ok(host.as_ref().map(canonical::Authority::name)),
            Err(why) => Err(*why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request};

    fn req(method: Method, target: &str, host: &str) -> Request<()> {
        let mut req = Request::builder().method(method).uri(target);
        if !host.is_empty() {
            req = req.header(HOST, host);
        }
        req.body(()).unwrap()
    }

    fn get(target: &str) -> Request<()> {
        req(Method::GET, target, "example.com")
    }

    fn verdict(acl: &AclLayer, req: &Request<()>, peer: &str) -> Result<(), DenyReason> {
        acl.evaluate(&RequestInfo::from_request(req), Some(peer.parse().unwrap()))
            .map_err(|d| d.reason())
    }

    #[test]
    fn first_match_wins_in_rule_order() {
        let acl = AclLayer::builder()
            .allow_ip("10.1.0.0/16")
            .deny_ip("10.0.0.0/8")
            .allow_ip("10.2.0.0/16") // never reached for 10.2/16: the deny above matches first
            .build()
            .unwrap();
        let r = get("/");
        assert_eq!(verdict(&acl, &r, "10.1.2.3"), Ok(()));
        assert_eq!(verdict(&acl, &r, "10.2.2.3"), Err(DenyReason::Rule(1)));
        assert_eq!(verdict(&acl, &r, "192.0.2.1"), Ok(()), "default allow");
        let acl = AclLayer::builder()
            .allow_ip("2001:db8::/32")
            .default_action(Action::Deny)
            .build()
            .unwrap();
        assert_eq!(verdict(&acl, &r, "2001:db8::7"), Ok(()));
        assert_eq!(verdict(&acl, &r, "2001:db9::7"), Err(DenyReason::Default));
    }

    #[test]
    fn conditions_of_a_rule_all_hold() {
        let acl = AclLayer::builder()
            .rule(Rule::allow().ip("10.0.0.0/8").path_prefix("/admin"))
            .rule(Rule::deny().path_prefix("/admin"))
            .rule(Rule::deny().method(Method::DELETE).host("*.example.com"))
            .build()
            .unwrap();
        assert_eq!(verdict(&acl, &get("/admin/x"), "10.0.0.1"), Ok(()));
        assert_eq!(
            verdict(&acl, &get("/admin/x"), "192.0.2.1"),
            Err(DenyReason::Rule(1))
        );
        assert_eq!(verdict(&acl, &get("/public"), "192.0.2.1"), Ok(()));
        let delete = |host| req(Method::DELETE, "/x", host);
        assert_eq!(
            verdict(&acl, &delete("api.Example.com:8443"), "192.0.2.1"),
            Err(DenyReason::Rule(2))
        );
        assert_eq!(verdict(&acl, &delete("example.com"), "192.0.2.1"), Ok(()));
        assert_eq!(
            verdict(&acl, &delete(""), "192.0.2.1"),
            Ok(()),
            "no host: no host match"
        );
        assert_eq!(
            verdict(&acl, &delete("bad host"), "192.0.2.1"),
            Err(DenyReason::Unreadable(
                "host has a character not allowed in a host name"
            ))
        );
    }

    #[test]
    fn path_spellings_cannot_bypass_a_prefix() {
        let acl = AclLayer::builder()
            .rule(Rule::deny().path_prefix("/admin"))
            .build()
            .unwrap();
        for path in [
            "/admin",
            "/%61dmin",
            "/x/../admin",
            "//admin",
            "/./admin/",
            "/x/%2e%2e/admin/y",
            "///admin//z",
        ] {
            assert_eq!(
                verdict(&acl, &get(path), "192.0.2.1"),
                Err(DenyReason::Rule(0)),
                "{path}"
            );
        }
        assert_eq!(
            verdict(&acl, &get("/ADMIN"), "192.0.2.1"),
            Ok(()),
            "case-sensitive by default"
        );
        assert_eq!(verdict(&acl, &get("/administrator"), "192.0.2.1"), Ok(()));
        assert_eq!(
            verdict(&acl, &get("/admin%2Fx"), "192.0.2.1"),
            Err(DenyReason::Unreadable("encoded '/' (%2F) in path"))
        );
        let folded = AclLayer::builder()
            .rule(Rule::deny().path_prefix("/admin"))
            .ignore_path_case(true)
            .build()
            .unwrap();
        assert_eq!(
            verdict(&folded, &get("/ADMIN"), "192.0.2.1"),
            Err(DenyReason::Rule(0))
        );
        assert_eq!(
            verdict(&folded, &get("/%41dmin/x"), "192.0.2.1"),
            Err(DenyReason::Rule(0))
        );
    }

    #[test]
    fn an_unknown_client_fails_closed() {
        let acl = AclLayer::builder()
            .allow_ip("10.0.0.0/8")
            .deny_ip("192.0.2.0/24")
            .build()
            .unwrap();
        let r = get("/");
        let info = RequestInfo::from_request(&r);
        assert_eq!(
            acl.evaluate(&info, None).map_err(|d| d.reason()),
            Err(DenyReason::Rule(1))
        );
    }

    #[test]
    fn the_client_comes_from_trusted_proxies_only() {
        let acl = AclLayer::builder()
            .deny_ip("198.51.100.0/24")
            .trusted_proxies(["10.0.0.0/8"])
            .build()
            .unwrap();
        let mut r = get("/");
        r.headers_mut()
            .insert("x-forwarded-for", "198.51.100.9, 10.0.0.2".parse().unwrap());
        assert_eq!(verdict(&acl, &r, "10.0.0.1"), Err(DenyReason::Rule(0)));
        assert_eq!(verdict(&acl, &r, "203.0.113.1"), Ok(()));
        r.headers_mut().insert(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.4".parse().unwrap(),
        );
        assert_eq!(
            verdict(&acl, &r, "10.0.0.1"),
            Ok(()),
            "stops at the first untrusted hop"
        );
    }

    #[test]
    fn dry_run_counts_and_lets_through() {
        let acl = AclLayer::builder()
            .deny_ip("0.0.0.0/0")
            .dry_run(true)
            .build()
            .unwrap();
        let r = get("/");
        let info = RequestInfo::from_request(&r);
        let peer = Some("192.0.2.1".parse().unwrap());
        assert!(acl.check(&info, peer).is_ok());
        assert!(acl.check(&info, peer).is_ok());
        assert_eq!(acl.stats().dry_run_denied, 2);
        assert_eq!(acl.stats().denied, 0);
        assert!(!acl.denies_at_accept("192.0.2.1".parse().unwrap()));
        assert!(!acl.filters_at_accept());
    }

    #[test]
    fn accept_time_denial_follows_the_rules() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let acl = AclLayer::builder()
            .rule(Rule::allow().ip("192.0.2.0/24").path_prefix("/health"))
            .deny_ip("192.0.2.0/24")
            .deny_ip("198.51.100.0/24")
            .rule(Rule::deny().path_prefix("/admin"))
            .trusted_proxies(["198.51.100.7"])
            .build()
            .unwrap();
        assert!(acl.filters_at_accept());
        assert!(
            !acl.denies_at_accept(ip("192.0.2.1")),
            "may ask for /health"
        );
        assert!(acl.denies_at_accept(ip("198.51.100.1")));
        assert!(acl.denies_at_accept(ip("::ffff:198.51.100.1")));
        assert!(!acl.denies_at_accept(ip("198.51.100.7")), "a trusted proxy");
        assert!(!acl.denies_at_accept(ip("203.0.113.1")));
        assert_eq!(acl.stats().denied_at_accept, 2);
        // nginx `allow 10.0.0.0/8; deny all;`: an allow list.
        let list = AclLayer::builder()
            .allow_ip("10.0.0.0/8")
            .rule(Rule::deny())
            .build()
            .unwrap();
        assert!(!list.denies_at_accept(ip("10.1.1.1")));
        assert!(list.denies_at_accept(ip("11.1.1.1")));
        let paths_only = AclLayer::builder()
            .rule(Rule::deny().path_prefix("/a"))
            .build()
            .unwrap();
        assert!(!paths_only.filters_at_accept());
    }

    #[test]
    fn config_errors_name_the_field_and_value() {
        let err = AclLayer::builder()
            .trusted_proxies(["10.0.0.0/33"])
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "acl.trusted_proxies");
        assert_eq!(err.value(), "\"10.0.0.0/33\"");
        let err = AclLayer::builder()
            .allow_ip("10.0.0.0/8")
            .rule(Rule::deny().path_prefix("admin"))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "acl.rule.path_prefix");
        assert_eq!(err.value(), "\"admin\" (rule 1)");
        let err = AclLayer::builder()
            .rule(Rule::allow().host("*."))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "acl.rule.host");
    }
}
