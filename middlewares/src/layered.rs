//! [`Layered`]: the one service type every layer of this crate builds.
//!
//! A layer's service is its configuration (the layer value: a policy with shared state) next to
//! the inner service. Each layer implements `tower::Service` for `Layered<ItsLayer, S>`
//! ([`Timeout`](crate::timeout::Timeout) is `Layered<TimeoutLayer, S>`, and so on), and with the
//! `pingora` feature one generic `ProxyHttp` impl serves every `Layered<P, S>` whose `P` is a
//! [`ProxyPolicy`](crate::proxy_host::ProxyPolicy): ours and a user's alike.

/// A policy `P` applied to an inner service `S`. Cheap to clone when both are.
#[derive(Debug, Clone)]
pub struct Layered<P, S> {
    pub(crate) policy: P,
    pub(crate) inner: S,
}

impl<P, S> Layered<P, S> {
    /// Applies `policy` to `inner`.
    pub const fn wrap(policy: P, inner: S) -> Self {
        Layered { policy, inner }
    }

    /// The layer value this service was built from (its policy and shared state).
    pub fn layer(&self) -> &P {
        &self.policy
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}
