//! Errors of the circuit breaker: a rejected call and an invalid configuration.

use std::fmt;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::breaker::State;

/// A call was not permitted: the breaker is open, forced open, or half-open with every trial
/// slot taken.
///
/// Carries what the HTTP answer needs: `503 Service Unavailable` with `Retry-After` set to the
/// time left until the breaker lets a trial call through (whole seconds, rounded up, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    state: State,
    retry_after: Duration,
}

impl CircuitOpen {
    /// A rejection in `state`, with `retry_after` left until half-open.
    pub fn new(state: State, retry_after: Duration) -> Self {
        CircuitOpen { state, retry_after }
    }

    /// The state that rejected the call (`Open`, `HalfOpen` or `ForcedOpen`).
    pub fn state(&self) -> State {
        self.state
    }

    /// Time left until the breaker admits a trial call. Zero when half-open with every trial
    /// slot taken; the configured base wait when forced open (a hint only).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up, at least 1: the value of
    /// the `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// The status to answer with: `503 Service Unavailable`.
    pub fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    /// The headers to answer with: `Retry-After`.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
        headers
    }

    /// The full answer, with an empty (`Default`) body. Both hosts use this, so they answer
    /// alike.
    ///
    /// The response carries this `CircuitOpen` in its extensions, so layers outside the breaker
    /// can tell a local fast-fail from an upstream's `503`: the retry layer never retries it.
    pub fn to_response<B: Default>(&self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status();
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
        res.extensions_mut().insert(*self);
        res
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            State::HalfOpen => write!(f, "circuit breaker half-open and every trial call taken"),
            state => write!(
                f,
                "circuit breaker {state}, retry after {}s",
                self.retry_after_secs()
            ),
        }
    }
}

impl std::error::Error for CircuitOpen {}

pub use crate::ConfigError;
