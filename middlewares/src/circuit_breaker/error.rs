//! Errors of the circuit breaker: a rejected call and an invalid configuration.

use std::fmt;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::breaker::State;
use crate::rejection::ceil_secs;
use crate::Rejection;

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
        ceil_secs(self.retry_after).max(1)
    }
}

/// Both hosts render the answer through this, so they answer alike. The tower answer carries
/// this `CircuitOpen` in its extensions, so layers outside the breaker can tell a local
/// fast-fail from an upstream's `503`: the retry layer never retries it.
impl Rejection for CircuitOpen {
    /// `503 Service Unavailable`.
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    /// `Retry-After`.
    fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
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
