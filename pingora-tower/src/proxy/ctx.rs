//! [`ProxyCtx`]: the per-request bookkeeping of [`RoutingProxy`](super::RoutingProxy): the
//! resolved route, the canonical host and path, and which backends were tried.

use std::net::SocketAddr;

use middlewares::proxy_host::AttemptTimeout;

use middlewares::canonical::Rejected;

/// The per-request state of [`RoutingProxy`](super::RoutingProxy) (its `ProxyHttp::CTX`).
///
/// A wrapping layer's `CTX` holds this one; layers that know the base proxy's type can read it.
/// The request deadline is not here: it belongs to the timeout policy the builder installs
/// around the base proxy (see [`ProxyBuilder::request_timeout`](super::ProxyBuilder::request_timeout)).
#[derive(Debug, Default)]
pub struct ProxyCtx {
    pub(super) route: RouteState,
    /// The canonical host (with port) when it differs from the client's text.
    pub(super) host: Option<Box<str>>,
    /// The canonical path when it differs from the client's.
    pub(super) path: Option<Box<str>>,
    pub(super) tried: Tried,
    /// Backends offered in the current attempt.
    pub(super) offered: Tried,
    /// The last attempt failed; the next `upstream_peer` call starts a new one.
    pub(super) attempt_failed: bool,
    pub(super) current: Option<(usize, SocketAddr)>,
    pub(super) attempts: u32,
    /// Pingora will retry a failure on a reused connection: give the same backend once more.
    pub(super) retry_same: bool,
    /// The current attempt's limit on the time to the response head, when one is configured.
    pub(super) response_timeout: AttemptTimeout,
}

/// Where routing stands for this request.
#[derive(Debug, Default, Clone, Copy)]
pub(super) enum RouteState {
    #[default]
    Unresolved,
    NoMatch,
    Matched(usize),
    /// The host or path cannot be read unambiguously (answered `400`).
    BadRequest(Rejected),
}

impl ProxyCtx {
    /// The matched route's index (in the order routes were given), once `request_filter` or
    /// `upstream_peer` ran; `None` before, or when nothing matched.
    pub fn route(&self) -> Option<usize> {
        match self.route {
            RouteState::Matched(i) => Some(i),
            _ => None,
        }
    }

    /// The backend of the latest `upstream_peer` call.
    pub fn backend(&self) -> Option<SocketAddr> {
        self.current.map(|(_, addr)| addr)
    }

    /// How many times `upstream_peer` returned a backend for this request.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How many distinct backends were tried.
    pub fn tried_backends(&self) -> usize {
        self.tried.len()
    }
}

/// Backend indices already tried: a bit set for the first 64, a list beyond.
#[derive(Debug, Default)]
pub(super) struct Tried {
    bits: u64,
    more: Vec<usize>,
}

impl Tried {
    pub(super) fn contains(&self, i: usize) -> bool {
        if i < 64 {
            self.bits & (1 << i) != 0
        } else {
            self.more.contains(&i)
        }
    }

    pub(super) fn clear(&mut self) {
        self.bits = 0;
        self.more.clear();
    }

    pub(super) fn insert(&mut self, i: usize) {
        if i < 64 {
            self.bits |= 1 << i;
        } else if !self.more.contains(&i) {
            self.more.push(i);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.bits.count_ones() as usize + self.more.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_set_spills_past_64() {
        let mut t = Tried::default();
        for i in [0, 5, 63, 64, 200, 200] {
            t.insert(i);
        }
        assert!(t.contains(0) && t.contains(63) && t.contains(64) && t.contains(200));
        assert!(!t.contains(1) && !t.contains(65));
        assert_eq!(t.len(), 5);
    }
}
