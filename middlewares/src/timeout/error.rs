//! The error a timed-out request or body ends with.

use std::fmt;

use http::{Response, StatusCode};

/// The deadline passed before the inner service answered (or, with
/// [`BodyTimeoutLayer`](super::BodyTimeoutLayer), before the response body ended).
///
/// [`Timeout`](super::Timeout) never returns this as an error: it answers with
/// [`Elapsed::into_response`] instead, so the inner error type is kept.
/// [`TimeoutBody`](super::TimeoutBody) ends its stream with a boxed `Elapsed`, which callers can
/// downcast.
/// The Pingora host renders its `504` with [`Elapsed::into_response`] or [`Elapsed::status`] so
/// both hosts answer alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    status: StatusCode,
}

impl Elapsed {
    /// An `Elapsed` that renders as `status`.
    pub const fn new(status: StatusCode) -> Self {
        Elapsed { status }
    }

    /// The status the timeout answers with (`504 Gateway Timeout` unless configured otherwise).
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// Renders the timeout answer: the configured status, no headers, an empty `B::default()`
    /// body.
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status;
        res
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
