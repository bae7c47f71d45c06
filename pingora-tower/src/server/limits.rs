//! [`ClientLimits`]: how long a client may take, and how many may be connected at once.

use std::time::Duration;

/// Default [`ClientLimits::header_timeout`]: nginx's `client_header_timeout` (60 s).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`ClientLimits::keepalive_timeout`]: nginx's `keepalive_timeout` (75 s).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default [`ClientLimits::body_timeout`]: nginx's `client_body_timeout` (60 s).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`ClientLimits::send_timeout`]: nginx's `send_timeout` (60 s).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`ClientLimits::max_connections`]. nginx allows 512 `worker_connections` per worker
/// (counting its upstream connections too), HAProxy derives `maxconn` from the descriptor
/// limit, Envoy sets none; 1024 client connections stays well inside a common `ulimit -n` of
/// a few thousand for a proxy, which holds an upstream connection per client.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Timeouts for clients and a cap on simultaneous connections, enforced by the server harness
/// ([`spawn_with`](super::spawn_with)) for every app it serves: [`ServeTower`](crate::ServeTower)
/// and the proxy alike (the proxy takes the same methods on its
/// [`ProxyBuilder`](crate::proxy::ProxyBuilder)).
///
/// Pingora on its own waits forever for the next request on a keep-alive connection and only
/// bounds each single read (60 s), so a client sending one byte every few seconds holds a
/// connection open indefinitely. Every wait here is bounded by default:
///
/// | limit | default | follows | what it bounds |
/// |---|---|---|---|
/// | [`header_timeout`](Self::header_timeout) | 60 s | nginx `client_header_timeout` (HAProxy `timeout http-request`) | the whole request head, in total |
/// | [`keepalive_timeout`](Self::keepalive_timeout) | 75 s | nginx `keepalive_timeout` (HAProxy `timeout http-keep-alive`) | idle time before the next request's first byte |
/// | [`body_timeout`](Self::body_timeout) | 60 s | nginx `client_body_timeout` | idle time between reads of a request body |
/// | [`send_timeout`](Self::send_timeout) | 60 s | nginx `send_timeout` | idle time writing to the client |
/// | [`max_connections`](Self::max_connections) | 1024 | Envoy's listener connection limit (closes the excess at accept) | connections served at once |
///
/// The head deadline of a connection's first request counts from the accept (a connection that
/// never sends anything is closed after `header_timeout`); on a reused keep-alive connection,
/// `keepalive_timeout` bounds the wait for the next request's first byte and `header_timeout`
/// counts from that byte. A head still incomplete at its deadline is answered
/// `408 Request Timeout` and the connection closed; a connection that sent nothing of the
/// head is closed quietly, as nginx does. The idle timeouts restart whenever a read or write
/// makes progress, so a large body or response at any steady pace is never cut.
///
/// Beyond `max_connections`, a new connection is closed as soon as it is accepted (Envoy's
/// behaviour). nginx and HAProxy instead stop accepting and leave the excess in the kernel's
/// backlog; Pingora's accept loop cannot pause, and an immediate close lets a client or a load
/// balancer retry elsewhere at once instead of waiting on a full backlog.
///
/// On HTTP/2 connections (h2c or ALPN) the head and body timeouts are per stream inside the h2
/// codec; the harness closes such a connection when nothing is read or written for
/// `keepalive_timeout`, and applies `send_timeout` to its writes.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use pingora_tower::{server::{self, ClientLimits}, ServeTower};
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let app = Router::new().route("/", get(|| async { "ok" }));
/// let limits = ClientLimits::new()
///     .header_timeout(Duration::from_secs(10))
///     .keepalive_timeout(Duration::from_secs(30))
///     .max_connections(10_000);
/// let running = server::spawn_with("127.0.0.1:0", ServeTower::new(app), limits).await?;
/// running.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub(crate) header_timeout: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ClientLimits {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Total time to receive a request head (request line and headers). Counted from the
    /// accept for a connection's first request, and from the first byte of each later request
    /// on a keep-alive connection. An incomplete head gets `408`; no byte at all, a quiet close.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may stay idle between the end of one response and the
    /// first byte of the next request. Closed quietly after that.
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = timeout;
        self
    }

    /// Longest wait for the next bytes of a request body (or of anything read after the head,
    /// such as an upgraded connection's data). The connection is closed when it passes.
    /// Pingora's proxy keeps a read open on the client while it waits for the upstream, so
    /// there this also bounds a silent client's wait for a slow upstream.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Longest a write to the client may make no progress (a client that stopped reading).
    /// The connection is closed when it passes.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Most connections served at once (across every thread, with
    /// [`ListenOptions::threads`](super::ListenOptions::threads)); a connection beyond it is
    /// closed as soon as it is accepted.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Checks that no limit is zero (a zero timeout would close every connection at once; a
    /// zero cap would refuse every one).
    ///
    /// # Errors
    /// [`InvalidClientLimit`] naming the first zero field and its value.
    pub fn validate(&self) -> Result<(), InvalidClientLimit> {
        let timeouts = [
            ("header_timeout", self.header_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
            ("body_timeout", self.body_timeout),
            ("send_timeout", self.send_timeout),
        ];
        for (field, value) in timeouts {
            if value.is_zero() {
                return Err(InvalidClientLimit {
                    field,
                    value: format!("{value:?}"),
                });
            }
        }
        if self.max_connections == 0 {
            return Err(InvalidClientLimit {
                field: "max_connections",
                value: "0".to_owned(),
            });
        }
        Ok(())
    }
}

/// A [`ClientLimits`] value that cannot work: `Display` names the field and the value, e.g.
/// `header_timeout must be greater than 0, got 0ns`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be greater than 0, got {value}")]
pub struct InvalidClientLimit {
    /// The setting, e.g. `header_timeout` or `max_connections`.
    pub field: &'static str,
    /// The value as given.
    pub value: String,
}

impl From<InvalidClientLimit> for std::io::Error {
    fn from(e: InvalidClientLimit) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_are_named_with_their_value() {
        let err = ClientLimits::new()
            .body_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "body_timeout must be greater than 0, got 0ns"
        );
        let err = ClientLimits::new()
            .max_connections(0)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "max_connections must be greater than 0, got 0"
        );
        assert!(ClientLimits::new().validate().is_ok());
    }
}
