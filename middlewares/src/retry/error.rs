//! Errors of the retry layer: configuration errors and the per-try timeout.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};

pub use crate::ConfigError;

/// The last allowed attempt ran longer than the per-try timeout
/// ([`RetryLayerBuilder::per_try_timeout`](super::RetryLayerBuilder::per_try_timeout)).
///
/// The tower service answers this with [`AttemptTimedOut::into_response`]
/// (`504 Gateway Timeout`, empty body) and keeps the inner error type; the type exists so the
/// Pingora host can answer identically and for generic (non-HTTP) use.
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

    /// The status to answer with: `504 Gateway Timeout`.
    pub fn status(&self) -> StatusCode {
        StatusCode::GATEWAY_TIMEOUT
    }

    /// The status and headers (none) to answer with.
    pub fn to_parts(&self) -> (StatusCode, HeaderMap) {
        (self.status(), HeaderMap::new())
    }

    /// A `504 Gateway Timeout` response with a default (empty) body.
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status();
        res
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry attempt timed out after {:?}", self.timeout)
    }
}

impl std::error::Error for AttemptTimedOut {}
