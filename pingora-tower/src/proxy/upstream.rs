//! [`Upstream`]: a group of backend URLs with weights, a balancing policy and an optional active
//! health check; compiled at `build()` into a `pingora-load-balancing` [`LoadBalancer`].

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::header::HeaderName;
use http::{HeaderValue, Uri};
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::consistent::KetamaHashing;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::ProxyConfigError;
use super::health::{BackendChecks, HealthCheck};
use crate::tls::{PeerTls, UpstreamTls};

/// The largest accepted backend weight. Weighted round robin keeps one slot per unit of weight
/// and Ketama hashing 160 ring points per unit, so the weight bounds memory.
pub const MAX_WEIGHT: u32 = 1_000;

/// How many candidates one `select_with` call may look at before the proxy falls back to a
/// linear scan of the backends (see [`RoutingProxy`](super::RoutingProxy)).
const MAX_SELECT_ITERATIONS: usize = 256;

/// Where a request goes: one or more backend URLs, balanced by weighted round robin (default) or
/// consistent hashing, optionally health checked.
///
/// URLs are `http://host[:port]` or `https://host[:port]` (ports default to 80 and 443); paths,
/// queries and credentials are rejected. Host names are resolved once, at `build()`, with the
/// system resolver; a name with several addresses becomes one backend per address, each with
/// the URL's weight. `https` backends are verified against the system roots with the URL's host
/// as SNI and expected certificate name, unless [`tls`](Self::tls) says otherwise.
///
/// By default the client's `Host` header is forwarded unchanged; see
/// [`preserve_host`](Self::preserve_host).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use pingora_tower::proxy::{HashKey, HealthCheck, Upstream};
///
/// let api = Upstream::weighted([("http://10.0.0.1:8080", 3), ("http://10.0.0.2:8080", 1)])
///     .health_check(HealthCheck::http("/health").interval(Duration::from_secs(2)));
/// let sticky = Upstream::weighted([("http://10.0.0.3", 1), ("http://10.0.0.4", 1)])
///     .hashing(HashKey::ClientIp);
/// # let _ = (api, sticky);
/// ```
#[derive(Debug, Clone)]
pub struct Upstream {
    targets: Vec<(String, u32)>,
    hashing: Option<HashKey>,
    health: Option<HealthCheck>,
    preserve_host: bool,
    tls: Option<UpstreamTls>,
}

/// What consistent hashing ([`Upstream::hashing`]) hashes to pick a backend. Requests with the
/// same key go to the same backend while it is healthy; when it is not, or when it was already
/// tried for this request, the next one on the Ketama ring is used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashKey {
    /// The client's IP address (the TCP peer, not `X-Forwarded-For`).
    ClientIp,
    /// The value of this request header (an absent header hashes as empty).
    Header(String),
    /// The request path, without the query.
    Path,
}

impl Upstream {
    /// One backend with weight 1.
    pub fn new(url: impl Into<String>) -> Self {
        Upstream {
            targets: vec![(url.into(), 1)],
            hashing: None,
            health: None,
            preserve_host: true,
            tls: None,
        }
    }

    /// Several backends with relative weights: `[("http://a:80", 3), ("http://b:80", 1)]` sends
    /// three requests out of four to `a`. Weights must be in `1..=`[`MAX_WEIGHT`].
    pub fn weighted<I, U>(targets: I) -> Self
    where
        I: IntoIterator<Item = (U, u32)>,
        U: AsRef<str>,
    {
        Upstream {
            targets: targets
                .into_iter()
                .map(|(url, weight)| (url.as_ref().to_owned(), weight))
                .collect(),
            hashing: None,
            health: None,
            preserve_host: true,
            tls: None,
        }
    }

    /// Picks backends by consistent (Ketama) hashing of `key` instead of weighted round robin.
    pub fn hashing(mut self, key: HashKey) -> Self {
        self.hashing = Some(key);
        self
    }

    /// Checks every backend in the background; unhealthy backends get no traffic until they
    /// pass again. The checks run while the proxy runs and stop with it.
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health = Some(check);
        self
    }

    /// `true` (default): forward the client's `Host` header. `false`: send the backend URL's
    /// `host[:port]` instead, as virtual-hosted upstreams (CDNs, SaaS) usually need.
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }

    /// How `https://` backends are verified and which client certificate the proxy presents
    /// (see [`UpstreamTls`]). Without it: verification against the system roots, SNI from the
    /// URL, no client certificate.
    pub fn tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The backend URLs and weights, as given.
    pub fn targets(&self) -> impl Iterator<Item = (&str, u32)> {
        self.targets.iter().map(|(u, w)| (u.as_str(), *w))
    }

    pub(crate) fn label(&self) -> String {
        let urls: Vec<&str> = self.targets.iter().map(|(u, _)| u.as_str()).collect();
        urls.join(", ")
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

impl From<&str> for Upstream {
    fn from(url: &str) -> Self {
        Upstream::new(url)
    }
}

impl From<String> for Upstream {
    fn from(url: String) -> Self {
        Upstream::new(url)
    }
}

/// One resolved backend address and how to talk to it.
#[derive(Debug)]
pub(crate) struct BackendInfo {
    pub(crate) addr: SocketAddr,
    /// The `pingora-load-balancing` identity (address + weight), for readiness lookups.
    pub(crate) backend: Backend,
    pub(crate) url: String,
    pub(crate) weight: u32,
    pub(crate) tls: bool,
    /// The URL's host without brackets or port: SNI and certificate name for `https`.
    pub(crate) sni: String,
    /// `host[:port]` as written in the URL (port omitted when it is the scheme's default).
    pub(crate) authority: HeaderValue,
}

/// The selection algorithm of one upstream.
enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Ketama(Arc<LoadBalancer<KetamaHashing>>),
}

/// A compiled [`Upstream`]: backends sorted by address, their balancer and health state.
pub(crate) struct UpstreamGroup {
    pub(crate) label: String,
    /// Sorted by `addr`; a backend's position is its index in the per-request tried set.
    pub(crate) backends: Box<[BackendInfo]>,
    balancer: Balancer,
    pub(crate) hash_key: Option<CompiledHashKey>,
    pub(crate) preserve_host: bool,
    health_interval: Option<Duration>,
    /// The CA, client identity and verification of `https` backends, when configured.
    pub(crate) peer_tls: Option<PeerTls>,
}

/// [`HashKey`] with its header name parsed once.
pub(crate) enum CompiledHashKey {
    ClientIp,
    Header(HeaderName),
    Path,
}

impl std::fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("label", &self.label)
            .field("backends", &self.backends)
            .field("health_interval", &self.health_interval)
            .finish_non_exhaustive()
    }
}

impl UpstreamGroup {
    /// Parses, resolves and validates `upstream`, and builds its load balancer.
    pub(crate) fn build(upstream: &Upstream) -> Result<Self, ProxyConfigError> {
        let label = upstream.label();
        let peer_tls = match &upstream.tls {
            None => None,
            Some(tls) => Some(
                tls.compile()
                    .map_err(|e| invalid(&label, format!("tls: {e}")))?,
            ),
        };
        let mut backends: Vec<BackendInfo> = Vec::new();
        for (url, weight) in &upstream.targets {
            if !(1..=MAX_WEIGHT).contains(weight) {
                return Err(ProxyConfigError::InvalidWeight {
                    url: url.clone(),
                    weight: *weight,
                    max: MAX_WEIGHT,
                });
            }
            for mut info in parse_backend(url, *weight)? {
                if upstream.tls.is_some() && !info.tls {
                    return Err(invalid(
                        url,
                        "TLS settings given for a plain http:// backend".into(),
                    ));
                }
                if let Some(sni) = peer_tls.as_ref().and_then(PeerTls::sni) {
                    // The handshakes of requests and of health checks use this name; the
                    // Host of `preserve_host(false)` keeps the URL's.
                    sni.clone_into(&mut info.sni);
                }
                if let Some(other) = backends.iter().find(|b| b.addr == info.addr) {
                    return Err(invalid(
                        url,
                        format!("resolves to {}, already used by {:?}", info.addr, other.url),
                    ));
                }
                backends.push(info);
            }
        }
        backends.sort_by_key(|b| b.addr);

        let hash_key = match &upstream.hashing {
            None => None,
            Some(HashKey::ClientIp) => Some(CompiledHashKey::ClientIp),
            Some(HashKey::Path) => Some(CompiledHashKey::Path),
            Some(HashKey::Header(name)) => Some(CompiledHashKey::Header(
                HeaderName::try_from(name.as_str()).map_err(|_| {
                    ProxyConfigError::InvalidHashHeader {
                        upstream: label.clone(),
                        name: name.clone(),
                    }
                })?,
            )),
        };

        let checks = match &upstream.health {
            Some(check) => Some(BackendChecks::build(
                check,
                &label,
                &backends,
                peer_tls.as_ref(),
            )?),
            None => None,
        };
        let health_interval = upstream.health.as_ref().map(HealthCheck::period);
        let balancer = if hash_key.is_some() {
            Balancer::Ketama(new_balancer(&label, &backends, checks, health_interval)?)
        } else {
            Balancer::RoundRobin(new_balancer(&label, &backends, checks, health_interval)?)
        };
        Ok(UpstreamGroup {
            label,
            backends: backends.into_boxed_slice(),
            balancer,
            hash_key,
            preserve_host: upstream.preserve_host,
            health_interval,
            peer_tls,
        })
    }

    /// The backend's position in [`Self::backends`].
    pub(crate) fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.backends.binary_search_by_key(addr, |b| b.addr).ok()
    }

    /// Whether the balancer considers this backend enabled and healthy.
    pub(crate) fn is_ready(&self, index: usize) -> bool {
        // Only health checks change readiness here; without them every backend is ready, and
        // asking the balancer would SipHash the backend on every request.
        if self.health_interval.is_none() {
            return true;
        }
        let backend = &self.backends[index].backend;
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().ready(backend),
            Balancer::Ketama(lb) => lb.backends().ready(backend),
        }
    }

    /// The balancer's pick among ready backends that `accept` allows, by index.
    pub(crate) fn select(&self, key: &[u8], accept: impl Fn(usize) -> bool) -> Option<usize> {
        // Nothing to balance: skip the balancer's hashing and candidate walk.
        if self.backends.len() == 1 {
            return (accept(0) && self.is_ready(0)).then_some(0);
        }
        let accept_backend = |b: &Backend, ready: bool| {
            ready
                && b.addr
                    .as_inet()
                    .and_then(|a| self.index_of(a))
                    .is_some_and(&accept)
        };
        let picked = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept_backend),
            Balancer::Ketama(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept_backend),
        };
        if let Some(b) = picked {
            return b.addr.as_inet().and_then(|a| self.index_of(a));
        }
        // The balancer's iterator may give up after MAX_SELECT_ITERATIONS candidates (Ketama
        // walks a ring of 160 points per weight unit): a scan keeps the "next untried healthy
        // backend" promise whatever the algorithm.
        (0..self.backends.len()).find(|&i| accept(i) && self.is_ready(i))
    }

    /// Starts the periodic health checks, if configured, as a task that ends when `stop`
    /// changes or its sender is dropped.
    pub(crate) fn spawn_health_checks(
        &self,
        stop: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        self.health_interval?;
        let task = match &self.balancer {
            Balancer::RoundRobin(lb) => {
                let lb = lb.clone();
                tokio::spawn(async move { lb.run(stop, None).await })
            }
            Balancer::Ketama(lb) => {
                let lb = lb.clone();
                tokio::spawn(async move { lb.run(stop, None).await })
            }
        };
        Some(task)
    }
}

fn new_balancer<S>(
    label: &str,
    backends: &[BackendInfo],
    checks: Option<BackendChecks>,
    health_interval: Option<Duration>,
) -> Result<Arc<LoadBalancer<S>>, ProxyConfigError>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let set: BTreeSet<Backend> = backends.iter().map(|b| b.backend.clone()).collect();
    let mut view = Backends::new(Static::new(set));
    if let Some(checks) = checks {
        view.set_health_check(Box::new(checks));
    }
    let mut lb = LoadBalancer::<S>::from_backends(view);
    lb.health_check_frequency = health_interval;
    // One slow backend must not delay the verdict on the others.
    lb.parallel_health_check = true;
    // Static discovery answers at once; this publishes the membership to the selector.
    match lb.update().now_or_never() {
        Some(Ok(())) => Ok(Arc::new(lb)),
        Some(Err(e)) => Err(invalid(label, format!("load balancer setup failed: {e}"))),
        None => Err(invalid(
            label,
            "load balancer setup did not complete".into(),
        )),
    }
}

fn invalid(url: &str, reason: String) -> ProxyConfigError {
    ProxyConfigError::InvalidUpstream {
        url: url.to_owned(),
        reason,
    }
}

/// Parses one backend URL and resolves its host (blocking, once, at build time).
fn parse_backend(url: &str, weight: u32) -> Result<Vec<BackendInfo>, ProxyConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(url, format!("not a valid URL ({e})")))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| invalid(url, "missing scheme (expected http:// or https://)".into()))?;
    let tls = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(invalid(url, format!("unsupported scheme {scheme:?}")));
    };
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(url, "missing host".into()))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            url,
            "credentials in the URL are not supported".into(),
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            url,
            format!(
                "paths and queries are not supported ({:?})",
                uri.path_and_query().map_or("", |p| p.as_str())
            ),
        ));
    }
    let host = authority.host();
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    if bare_host.is_empty() {
        return Err(invalid(url, "missing host".into()));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let authority_value = if port == default_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let authority_value = HeaderValue::from_str(&authority_value)
        .map_err(|_| invalid(url, "host is not a valid header value".into()))?;

    let addrs: Vec<SocketAddr> = (bare_host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(url, format!("cannot resolve host {bare_host:?} ({e})")))?
        .collect();
    if addrs.is_empty() {
        return Err(invalid(
            url,
            format!("host {bare_host:?} resolved to no address"),
        ));
    }
    addrs
        .into_iter()
        .map(|addr| {
            let backend = Backend::new_with_weight(&addr.to_string(), weight as usize)
                .map_err(|e| invalid(url, format!("bad address {addr} ({e})")))?;
            Ok(BackendInfo {
                addr,
                backend,
                url: url.to_owned(),
                weight,
                tls,
                sni: bare_host.to_ascii_lowercase(),
                authority: authority_value.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(upstream: Upstream) -> String {
        UpstreamGroup::build(&upstream).unwrap_err().to_string()
    }

    #[test]
    fn parses_ports_and_schemes() {
        let g = UpstreamGroup::build(&Upstream::weighted([
            ("http://127.0.0.1", 1),
            ("https://127.0.0.2", 2),
            ("http://127.0.0.3:9000/", 3),
        ]))
        .unwrap();
        let ports: Vec<_> = g.backends.iter().map(|b| b.addr.port()).collect();
        assert_eq!(ports, [80, 443, 9000]);
        assert!(g.backends[1].tls);
        assert_eq!(g.backends[2].authority, "127.0.0.3:9000");
        assert_eq!(g.backends[0].authority, "127.0.0.1");
        assert_eq!(g.backends[1].sni, "127.0.0.2");
    }

    #[test]
    fn rejects_bad_urls_naming_the_value() {
        assert_eq!(
            err(Upstream::new("htp://x")),
            r#"upstream "htp://x": unsupported scheme "htp""#
        );
        assert!(err(Upstream::new("127.0.0.1:80")).starts_with(r#"upstream "127.0.0.1:80": "#));
        assert!(err(Upstream::new("http://")).contains(r#""http://""#));
        assert!(err(Upstream::new("http://a:80/base")).contains("paths"));
        assert!(err(Upstream::new("http://u:p@127.0.0.1")).contains("credentials"));
        assert!(err(Upstream::weighted([("http://127.0.0.1:1", 0)])).contains("weight 0"));
        assert!(err(Upstream::weighted([
            ("http://127.0.0.1:1", 1),
            ("http://127.0.0.1:1", 1)
        ]))
        .contains("already used"));
    }

    #[test]
    fn resolves_host_names() {
        let g = UpstreamGroup::build(&Upstream::new("http://localhost:9")).unwrap();
        assert!(g.backends.iter().all(|b| b.addr.ip().is_loopback()));
        assert_eq!(g.backends[0].authority, "localhost:9");
    }
}
