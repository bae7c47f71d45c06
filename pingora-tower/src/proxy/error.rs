//! Errors of the proxy builder: [`ProxyConfigError`] (validation at `build()`) and
//! [`ProxyError`] (configuration or I/O, from the one-call `start` shortcuts).

use std::fmt;

/// A configuration value that `build()` rejected. `Display` names the field and the value, e.g.
/// `upstream "htp://x": unsupported scheme "htp"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyConfigError {
    /// An upstream URL that does not parse, uses a scheme other than `http`/`https`, carries a
    /// path or query, cannot be resolved, or duplicates another backend's address.
    #[error("upstream {url:?}: {reason}")]
    InvalidUpstream {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A backend weight outside `1..=MAX_WEIGHT`.
    #[error("upstream {url:?}: weight {weight} is out of range (1..={max})")]
    InvalidWeight {
        /// The URL the weight was given for.
        url: String,
        /// The weight as given.
        weight: u32,
        /// The largest accepted weight ([`MAX_WEIGHT`](super::MAX_WEIGHT)).
        max: u32,
    },
    /// An upstream with no backend URL.
    #[error("route {route}: upstream list is empty")]
    EmptyUpstream {
        /// The route that points at the empty upstream.
        route: RouteName,
    },
    /// A route whose host or prefix is malformed, or a second route with the same host and
    /// prefix.
    #[error("route {route}: {reason}")]
    InvalidRoute {
        /// The route.
        route: RouteName,
        /// What is wrong with it.
        reason: String,
    },
    /// A health check setting that cannot work (zero interval, zero threshold, bad path).
    #[error("upstream {upstream}: health check {field}: {reason}")]
    InvalidHealthCheck {
        /// The upstream's URLs, comma separated.
        upstream: String,
        /// The setting, e.g. `path` or `interval`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A consistent-hashing header name that is not a valid HTTP header name.
    #[error("upstream {upstream}: hash key header {name:?} is not a valid header name")]
    InvalidHashHeader {
        /// The upstream's URLs, comma separated.
        upstream: String,
        /// The header name as given.
        name: String,
    },
    /// A timeout of zero.
    #[error("timeouts: {field} must be greater than 0 ms")]
    InvalidTimeout {
        /// The setting as named on the builder: `connect_ms` or `request_ms`
        /// ([`with_timeouts`](super::ProxyBuilder::with_timeouts)), `connect_timeout`,
        /// `request_timeout`, `upstream_response_timeout`, `upstream_read_timeout` or
        /// `upstream_write_timeout`.
        field: &'static str,
    },
    /// A zero client timeout or connection cap (`header_timeout`, `keepalive_timeout`,
    /// `body_timeout`, `send_timeout`, `max_connections`).
    #[error("client limits: {field} must be greater than 0, got {value}")]
    InvalidClientLimit {
        /// The setting, e.g. `header_timeout`.
        field: &'static str,
        /// The value as given, e.g. `0ns`.
        value: String,
    },
    /// `threads(0)`.
    #[error("threads must be greater than 0, got {threads}")]
    InvalidThreads {
        /// The count as given.
        threads: usize,
    },
    /// `reuse_port(true)` without `threads(n)`: there is one accept loop, so one socket, and
    /// the setting would do nothing.
    #[error("reuse_port(true) needs threads(n): one SO_REUSEPORT socket per thread, and no thread was set")]
    ReusePortWithoutThreads,
    /// `admin_breaker_control(true)` without `admin(addr)`: the breakers are forced through the
    /// admin listener, and there is none.
    #[error("admin_breaker_control(true) needs admin(addr): breakers are forced through the admin listener, and no admin address was set")]
    BreakerControlWithoutAdmin,
}

/// How a route shows up in error messages: `host "api.example.com" prefix "/v1"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteName {
    pub(crate) host: Option<String>,
    pub(crate) prefix: String,
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "host {host:?} ")?;
        }
        write!(f, "prefix {:?}", self.prefix)
    }
}

/// Why [`PingoraProxy::start`](super::PingoraProxy::start) or
/// [`ProxyBuilder::start`](super::ProxyBuilder::start) returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The configuration was rejected before anything was bound.
    #[error(transparent)]
    Config(#[from] ProxyConfigError),
    /// Binding the listen address or waiting for the shutdown signal failed.
    #[error("proxy i/o: {0}")]
    Io(#[from] std::io::Error),
}
