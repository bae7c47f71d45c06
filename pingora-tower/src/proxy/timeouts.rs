//! The upstream timeouts of one attempt (connect, time to the response head, read and write
//! idle, pool idle), set on each peer [`RoutingProxy`](super::RoutingProxy) picks. The request
//! deadline across attempts is not here: it is the timeout policy the builder wraps around the
//! base proxy (see [`ProxyBuilder::request_timeout`](super::ProxyBuilder::request_timeout)).

use std::time::Duration;

use middlewares::proxy_host::AttemptTimeout;
use pingora_core::upstreams::peer::HttpPeer;

/// Default limit on one upstream connection attempt (TCP connect plus TLS handshake).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on one read from / one write to an upstream connection (nginx's
/// `proxy_read_timeout` and `proxy_send_timeout`). A request deadline, when set, shortens it
/// to what is left.
pub const DEFAULT_UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle upstream connection stays in the keep-alive pool.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Per-attempt upstream timeouts, validated by the builder (none is zero).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    /// Time from the attempt's start to the upstream's response head.
    pub(crate) response: Option<Duration>,
    pub(crate) read: Duration,
    pub(crate) write: Duration,
    /// Keep-alive pool idle time.
    pub(crate) idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            response: None,
            read: DEFAULT_UPSTREAM_IO_TIMEOUT,
            write: DEFAULT_UPSTREAM_IO_TIMEOUT,
            idle: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// Sets the attempt's timeouts on `peer`, and starts `response` on it when a time to the
    /// response head is configured.
    pub(crate) fn apply(&self, peer: &mut HttpPeer, response: &mut AttemptTimeout) {
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect);
        options.total_connection_timeout = Some(self.connect);
        options.read_timeout = Some(self.read);
        options.write_timeout = Some(self.write);
        options.idle_timeout = Some(self.idle);
        if let Some(limit) = self.response {
            response.start(peer, limit);
        }
    }
}
