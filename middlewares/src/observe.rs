//! [`Observer`]: what the layers tell a metrics recorder about the decisions they take.
//!
//! A layer built without an observer pays one branch on a `None` where it decides; with one, a
//! virtual call. The `obs` feature's [`Metrics`](crate::obs::Metrics) is an observer: hand it to
//! [`RateLimitBuilder::observer`](crate::rate_limit::RateLimitBuilder::observer) and
//! [`RetryBuilder::observer`](crate::retry::RetryBuilder::observer). A breaker reports its
//! transitions through its own `on_state_transition` callback.

use std::fmt;
use std::sync::Arc;

/// Receives the decisions of the rate limit and retry layers, in both hosts. Every method has
/// a no-op default; they are called on the request's task and must not block.
pub trait Observer: fmt::Debug + Send + Sync + 'static {
    /// A request was refused by a rate limiter (`429`), dry runs excluded.
    fn rate_limited(&self) {}

    /// A retry was granted (one more attempt will run).
    fn retried(&self) {}

    /// A retry the policy allowed was refused because the retry budget was empty.
    fn retry_budget_exhausted(&self) {}
}

/// The observer a layer holds, if any.
#[allow(dead_code)] // used by the layers that report, whichever are built
pub(crate) type MaybeObserver = Option<Arc<dyn Observer>>;
