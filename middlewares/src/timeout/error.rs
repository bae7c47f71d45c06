//! The error a timed-out request or body ends with.

use std::fmt;

use http::StatusCode;

use crate::Rejection;

/// The deadline passed before the inner service answered (or, with
/// [`BodyTimeoutLayer`](super::BodyTimeoutLayer), before the response body ended).
///
/// [`Timeout`](super::Timeout) never returns this as an error: it answers with its
/// [`Rejection::to_response`] instead, so the inner error type is kept.
/// [`TimeoutBody`](super::TimeoutBody) ends its stream with a boxed `Elapsed`, which callers can
/// downcast. The Pingora host answers with the same status, so both hosts answer alike.
///
/// The answer carries this value in its extensions, so a layer outside the timeout can tell a
/// deadline the client asked for ([`is_client_deadline`](Self::is_client_deadline), through
/// `x-request-timeout`) from one the server imposed: the circuit breaker counts only the latter
/// against the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    status: StatusCode,
    client_deadline: bool,
}

impl Elapsed {
    /// An `Elapsed` that renders as `status`.
    pub const fn new(status: StatusCode) -> Self {
        Elapsed {
            status,
            client_deadline: false,
        }
    }

    /// The same, marked as the expiry of a deadline the client shortened (`true`) or not.
    pub const fn with_client_deadline(mut self, client_deadline: bool) -> Self {
        self.client_deadline = client_deadline;
        self
    }

    /// Whether the deadline that passed was one the client asked for (shorter than the
    /// configured one): the backend is not to blame for it.
    pub const fn is_client_deadline(&self) -> bool {
        self.client_deadline
    }
}

impl Rejection for Elapsed {
    /// The status the timeout answers with (`504 Gateway Timeout` unless configured otherwise);
    /// no headers.
    fn status(&self) -> StatusCode {
        self.status
    }
}

impl Default for Elapsed {
    /// An `Elapsed` that renders as `504 Gateway Timeout`.
    fn default() -> Self {
        Elapsed::new(StatusCode::GATEWAY_TIMEOUT)
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}
