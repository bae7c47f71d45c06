//! [`HealthCheck`]: active HTTP or TCP checks of an upstream's backends, run by
//! `pingora-load-balancing` in-process for as long as the proxy runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora_error::{Error, ErrorType, Result as PResult};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{
    HealthCheck as LbHealthCheck, HttpHealthCheck, TcpHealthCheck,
};
use pingora_load_balancing::Backend;

use super::error::ProxyConfigError;
use super::upstream::BackendInfo;
use crate::tls::PeerTls;

/// Default time between two checks of a backend.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default limit on one check (connect, and for HTTP checks also the response head).
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of consecutive passed checks that make an unhealthy backend healthy.
pub const DEFAULT_HEALTHY_AFTER: usize = 2;
/// Default number of consecutive failed checks that make a healthy backend unhealthy.
pub const DEFAULT_UNHEALTHY_AFTER: usize = 3;

/// An active health check for every backend of an [`Upstream`](super::Upstream).
///
/// Backends start healthy. A backend turns unhealthy after
/// [`unhealthy_after`](Self::unhealthy_after) consecutive failed checks and healthy again after
/// [`healthy_after`](Self::healthy_after) consecutive passed ones (defaults 3 and 2, as
/// HAProxy's `fall`/`rise`). Checks of different backends run concurrently, every
/// [`interval`](Self::interval) (default 2 s). An `https` backend is checked over TLS with the
/// same SNI and certificate verification as proxied traffic.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use pingora_tower::proxy::HealthCheck;
///
/// let http = HealthCheck::http("/health")
///     .expect_status(204)
///     .interval(Duration::from_millis(500))
///     .healthy_after(1)
///     .unhealthy_after(2);
/// let tcp = HealthCheck::tcp().timeout(Duration::from_millis(200));
/// # let _ = (http, tcp);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    kind: Kind,
    interval: Duration,
    timeout: Duration,
    healthy_after: usize,
    unhealthy_after: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Http { path: String, expect: u16 },
    Tcp,
}

impl HealthCheck {
    /// `GET path` with the backend's `host[:port]` as `Host`; passes on status 200 (see
    /// [`expect_status`](Self::expect_status)).
    pub fn http(path: impl Into<String>) -> Self {
        Self::with_kind(Kind::Http {
            path: path.into(),
            expect: 200,
        })
    }

    /// Passes when a TCP connection (a TLS handshake for `https` backends) succeeds.
    pub fn tcp() -> Self {
        Self::with_kind(Kind::Tcp)
    }

    fn with_kind(kind: Kind) -> Self {
        HealthCheck {
            kind,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
        }
    }

    /// The status an HTTP check expects (default 200). No effect on TCP checks.
    pub fn expect_status(mut self, status: u16) -> Self {
        if let Kind::Http { expect, .. } = &mut self.kind {
            *expect = status;
        }
        self
    }

    /// Time between checks (default [`DEFAULT_HEALTH_INTERVAL`]).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Limit on one check (default [`DEFAULT_HEALTH_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Consecutive passed checks that make an unhealthy backend healthy (default
    /// [`DEFAULT_HEALTHY_AFTER`]).
    pub fn healthy_after(mut self, checks: usize) -> Self {
        self.healthy_after = checks;
        self
    }

    /// Consecutive failed checks that make a healthy backend unhealthy (default
    /// [`DEFAULT_UNHEALTHY_AFTER`]).
    pub fn unhealthy_after(mut self, checks: usize) -> Self {
        self.unhealthy_after = checks;
        self
    }

    pub(crate) fn period(&self) -> Duration {
        self.interval
    }

    fn validate(&self, upstream: &str) -> Result<(), ProxyConfigError> {
        let bad = |field, reason: &str| {
            Err(ProxyConfigError::InvalidHealthCheck {
                upstream: upstream.to_owned(),
                field,
                reason: reason.to_owned(),
            })
        };
        if self.interval.is_zero() {
            return bad("interval", "must be greater than zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be greater than zero");
        }
        if self.healthy_after == 0 {
            return bad("healthy_after", "must be at least 1");
        }
        if self.unhealthy_after == 0 {
            return bad("unhealthy_after", "must be at least 1");
        }
        if let Kind::Http { path, expect } = &self.kind {
            if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                return bad("path", &format!("{path:?} is not an absolute path"));
            }
            if !(100..=599).contains(expect) {
                return bad("expect_status", &format!("{expect} is not an HTTP status"));
            }
        }
        Ok(())
    }
}

/// The `pingora-load-balancing` health check of one upstream: one Pingora check per backend,
/// because each backend may have its own `Host`, SNI and scheme.
pub(crate) struct BackendChecks {
    upstream: String,
    checks: HashMap<SocketAddr, Box<dyn LbHealthCheck + Send + Sync>>,
    healthy_after: usize,
    unhealthy_after: usize,
}

impl BackendChecks {
    pub(crate) fn build(
        config: &HealthCheck,
        upstream: &str,
        backends: &[BackendInfo],
        peer_tls: Option<&PeerTls>,
    ) -> Result<Self, ProxyConfigError> {
        config.validate(upstream)?;
        let mut checks: HashMap<SocketAddr, Box<dyn LbHealthCheck + Send + Sync>> =
            HashMap::with_capacity(backends.len());
        for b in backends {
            let check: Box<dyn LbHealthCheck + Send + Sync> = match &config.kind {
                Kind::Tcp => {
                    let mut tcp = if b.tls {
                        TcpHealthCheck::new_tls(&b.sni)
                    } else {
                        TcpHealthCheck::new()
                    };
                    if let Some(tls) = peer_tls {
                        // A TCP check presents no client certificate (Pingora's `BasicPeer`).
                        tls.apply_options(&mut tcp.peer_template.options);
                    }
                    tcp.peer_template.options.connection_timeout = Some(config.timeout);
                    tcp.peer_template.options.total_connection_timeout = Some(config.timeout);
                    tcp
                }
                Kind::Http { path, expect } => {
                    let mut hc = HttpHealthCheck::new(&b.sni, b.tls);
                    let invalid = |e: Box<Error>| ProxyConfigError::InvalidHealthCheck {
                        upstream: upstream.to_owned(),
                        field: "path",
                        reason: e.to_string(),
                    };
                    let mut req =
                        RequestHeader::build("GET", path.as_bytes(), None).map_err(invalid)?;
                    req.insert_header(http::header::HOST, b.authority.clone())
                        .map_err(invalid)?;
                    hc.req = req;
                    // The checks verify and identify themselves like the requests do.
                    if let Some(tls) = peer_tls {
                        tls.apply(&mut hc.peer_template);
                    }
                    let opts = &mut hc.peer_template.options;
                    opts.connection_timeout = Some(config.timeout);
                    opts.total_connection_timeout = Some(config.timeout);
                    opts.read_timeout = Some(config.timeout);
                    opts.write_timeout = Some(config.timeout);
                    let expect = *expect;
                    hc.validator = Some(Box::new(move |resp| {
                        if resp.status.as_u16() == expect {
                            Ok(())
                        } else {
                            Error::e_explain(
                                ErrorType::CustomCode(
                                    "unexpected health check status",
                                    resp.status.as_u16(),
                                ),
                                format!("expected {expect}"),
                            )
                        }
                    }));
                    Box::new(hc)
                }
            };
            checks.insert(b.addr, check);
        }
        Ok(BackendChecks {
            upstream: upstream.to_owned(),
            checks,
            healthy_after: config.healthy_after,
            unhealthy_after: config.unhealthy_after,
        })
    }
}

#[async_trait]
impl LbHealthCheck for BackendChecks {
    async fn check(&self, target: &Backend) -> PResult<()> {
        match target.addr.as_inet().and_then(|a| self.checks.get(a)) {
            Some(check) => check.check(target).await,
            None => Error::e_explain(ErrorType::InternalError, "backend has no health check"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(upstream = %self.upstream, backend = %target.addr, "backend is healthy");
        } else {
            tracing::warn!(upstream = %self.upstream, backend = %target.addr, "backend is unhealthy");
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("{} ({})", target.addr, self.upstream)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_after
        } else {
            self.unhealthy_after
        }
    }
}
