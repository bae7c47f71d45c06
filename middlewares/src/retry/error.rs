//! Errors of the retry layer: configuration errors and the per-try timeout.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

pub use crate::ConfigError;
use crate::Rejection;

/// The last allowed attempt ran longer than the per-try timeout
/// ([`RetryBuilder::per_try_timeout`](super::RetryBuilder::per_try_timeout)).
///
/// The tower service answers this with its [`Rejection::to_response`] (`504 Gateway Timeout`,
/// empty body) and keeps the inner error type; the type exists so the Pingora host can answer
/// identically and for generic (non-HTTP) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimedOut {
    timeout: Duration,
}

impl AttemptTimedOut {
    /// The error for an attempt that exceeded `timeout`.
    pub fn new(timeout: Duration) -> Self {
        AttemptTimedOut { timeout }
    }

    /// The per-try timeout that elapsed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Rejection for AttemptTimedOut {
    /// `504 Gateway Timeout`, no headers.
    fn status(&self) -> StatusCode {
        StatusCode::GATEWAY_TIMEOUT
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry attempt timed out after {:?}", self.timeout)
    }
}

impl std::error::Error for AttemptTimedOut {}
