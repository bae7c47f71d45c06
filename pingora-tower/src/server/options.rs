//! [`ListenOptions`]: how a server listens and whom it serves.

use super::accept_filter::AcceptFilter;
use super::limits::ClientLimits;
use crate::tls::TlsConfig;

/// How [`spawn_with`](super::spawn_with) listens: the client limits, an accept-time filter,
/// TLS, and whether it serves from threads of its own (each with one `SO_REUSEPORT` socket,
/// if asked).
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    pub(super) limits: ClientLimits,
    pub(super) accept_filter: Option<AcceptFilter>,
    pub(super) reuse_port: bool,
    pub(super) tls: Option<TlsConfig>,
    pub(super) threads: Option<usize>,
}

impl ListenOptions {
    /// The default [`ClientLimits`], no filter, no TLS, served from the current runtime.
    pub fn new() -> Self {
        Self::default()
    }

    /// These client timeouts and connection cap.
    pub fn limits(mut self, limits: ClientLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Closes the connections `filter` refuses as soon as they are accepted.
    pub fn accept_filter(mut self, filter: AcceptFilter) -> Self {
        self.accept_filter = Some(filter);
        self
    }

    /// Terminates TLS with `tls` (see [`crate::tls`]). The handshake runs after the accept
    /// filter, so a refused address costs no handshake, and within the header timeout.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves from `threads` new OS threads, each running its own current-thread tokio runtime
    /// and accept loop, instead of one accept loop on the caller's runtime. A connection, its
    /// futures and its timers stay on the thread that accepted it; the connection cap counts
    /// the connections of every thread together. `0` is refused when the server starts.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// With several threads: bind one socket per thread with `SO_REUSEPORT`, so the kernel
    /// spreads new connections over the threads (by a hash of each connection's addresses),
    /// instead of one socket whose accept queue every thread polls. Off by default. The
    /// kernel's spread is per connection, not per load: a few long-lived connections may land
    /// on one thread. Without threads (one accept loop) it changes nothing.
    pub fn reuse_port(mut self, enabled: bool) -> Self {
        self.reuse_port = enabled;
        self
    }
}

impl From<ClientLimits> for ListenOptions {
    fn from(limits: ClientLimits) -> Self {
        ListenOptions::new().limits(limits)
    }
}
