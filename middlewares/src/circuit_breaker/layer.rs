//! The layer, its builder and the runtime handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tower_layer::Layer;

use super::breaker::{Breaker, Config, Metrics, Outcome, State};
use super::error::ConfigError;
use super::registry::Breakers;
use super::window::{Window, MAX_COUNT, MAX_SECS};
use super::{CircuitBreaker, DEFAULT_KEY};
use crate::{Layered, RequestInfo};

/// Longest wait in open accepted (a year): keeps every deadline far from overflow.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Most trial calls accepted in half-open.
const MAX_HALF_OPEN: u32 = 100_000;

pub(crate) type KeyFn = Arc<dyn Fn(&RequestInfo<'_>) -> String + Send + Sync>;

/// How a request finds its breaker.
pub(crate) enum Route {
    /// One breaker for everything: no hashing, no allocation per request.
    Single(Breaker),
    /// One breaker per key returned by the key function.
    Keyed(KeyFn),
}

/// State shared by the layer, every service it builds and every handle.
pub(crate) struct Shared {
    pub(crate) breakers: Breakers,
    pub(crate) route: Route,
    /// The proxy host's per-backend breakers, by socket address.
    #[cfg(feature = "pingora")]
    pub(crate) peers: super::proxy::PeerBreakers,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("breakers", &self.breakers)
            .field("keyed", &matches!(self.route, Route::Keyed(_)))
            .finish()
    }
}

/// Wraps services in a [`CircuitBreaker`]. Every service built from one layer value (and every
/// clone of it) shares the same breakers.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    pub(crate) shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    /// Starts a configuration with the defaults: count window of 20 calls, at least 10 calls,
    /// 50 % failure rate, 60 s in open, 3 trial calls, default classifier, one breaker.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    /// A handle to inspect and steer the breakers at run time.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.shared.breakers.clone())
    }

    /// The registry of breakers, for hosts that drive the breaker core directly (the Pingora
    /// proxy keeps one per upstream address in it).
    pub fn breakers(&self) -> &Breakers {
        &self.shared.breakers
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Layered::wrap(self.clone(), inner)
    }
}

/// Settings for a [`CircuitBreakerLayer`]; invalid values are reported by
/// [`build`](Self::build).
#[must_use]
pub struct CircuitBreakerBuilder {
    failure_rate: u8,
    slow_call_rate: Option<u8>,
    slow_call_duration: Option<Duration>,
    minimum_calls: u32,
    window: Window,
    consecutive_failures: Option<u32>,
    wait_in_open: Duration,
    backoff: Option<(f64, Duration)>,
    jitter: f64,
    half_open_calls: u32,
    max_keys: usize,
    key_fn: Option<KeyFn>,
    classifier: Option<super::breaker::Classifier>,
    on_transition: Option<super::breaker::TransitionFn>,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        CircuitBreakerBuilder {
            failure_rate: 50,
            slow_call_rate: None,
            slow_call_duration: None,
            minimum_calls: 10,
            window: Window::Count(20),
            consecutive_failures: None,
            wait_in_open: Duration::from_secs(60),
            backoff: None,
            jitter: 0.0,
            half_open_calls: 3,
            max_keys: 10_000,
            key_fn: None,
            classifier: None,
            on_transition: None,
        }
    }
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("failure_rate", &self.failure_rate)
            .field("slow_call_rate", &self.slow_call_rate)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("minimum_calls", &self.minimum_calls)
            .field("window", &self.window)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("wait_in_open", &self.wait_in_open)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("half_open_calls", &self.half_open_calls)
            .field("max_keys", &self.max_keys)
            .field("keyed", &self.key_fn.is_some())
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerBuilder {
    /// Opens when at least this percentage (`1..=100`) of the calls in the window failed.
    /// Default 50.
    pub fn failure_rate_threshold(mut self, percent: u8) -> Self {
        self.failure_rate = percent;
        self
    }

    /// Counts a call taking at least `d` as slow. Slow calls are not tracked unless this is
    /// set.
    pub fn slow_call_duration(mut self, d: Duration) -> Self {
        self.slow_call_duration = Some(d);
        self
    }

    /// Opens when at least this percentage (`1..=100`) of the calls in the window were slow.
    /// Default 100; needs [`slow_call_duration`](Self::slow_call_duration).
    pub fn slow_call_rate_threshold(mut self, percent: u8) -> Self {
        self.slow_call_rate = Some(percent);
        self
    }

    /// Rates are judged only once the window holds at least `n` calls (capped at the size of
    /// a count window). Default 10.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// The sliding window: the last N calls or the last N seconds. Default
    /// `Window::Count(20)`.
    pub fn sliding_window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Also opens after `n` failures in a row, whatever the rate and the minimum calls.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// How long the breaker stays open before letting trial calls through. Default 60 s.
    pub fn wait_in_open(mut self, d: Duration) -> Self {
        self.wait_in_open = d;
        self
    }

    /// Grows the wait each time the breaker reopens without having closed in between:
    /// `wait_in_open * multiplier^n`, at most `max`. Closing resets it.
    pub fn wait_in_open_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.backoff = Some((multiplier, max));
        self
    }

    /// Shortens each wait in open by a random fraction up to `ratio` (`0.0..=1.0`), so breakers
    /// that opened together do not probe together. Default 0.
    pub fn wait_in_open_jitter(mut self, ratio: f64) -> Self {
        self.jitter = ratio;
        self
    }

    /// How many trial calls half-open admits (at most this many in flight, and the breaker
    /// decides once they are all done). Default 3.
    pub fn permitted_calls_in_half_open(mut self, n: u32) -> Self {
        self.half_open_calls = n;
        self
    }

    /// One breaker per key instead of one for everything, e.g. per path or per tenant.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> String + Send + Sync + 'static,
    {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// Most keyed breakers kept (see [`Breakers`] for eviction). Default 10 000.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Decides which calls count as failures. The input is the response status, or `Err(())`
    /// when the inner service returned an error (or, in the proxy, the upstream could not be
    /// reached). Default: [`Outcome::classify_default`] (errors and `5xx` fail).
    pub fn classify<F>(mut self, f: F) -> Self
    where
        F: Fn(Result<StatusCode, ()>) -> Outcome + Send + Sync + 'static,
    {
        self.classifier = Some(Arc::new(f));
        self
    }

    /// Called with `(key, from, to)` on every state change, outside any lock (so it may use the
    /// handle). Transitions made by different threads at the same moment may be heard in either
    /// order; each carries its own `from`.
    pub fn on_state_transition<F>(mut self, f: F) -> Self
    where
        F: Fn(&str, State, State) + Send + Sync + 'static,
    {
        self.on_transition = Some(Arc::new(f));
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer, ConfigError> {
        let percent = |field, v: u8| {
            if (1..=100).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::new(field, "1..=100", v))
            }
        };
        percent("circuit_breaker.failure_rate_threshold", self.failure_rate)?;
        if let Some(v) = self.slow_call_rate {
            percent("circuit_breaker.slow_call_rate_threshold", v)?;
            if self.slow_call_duration.is_none() {
                return Err(ConfigError::with_value_text(
                    "circuit_breaker.slow_call_rate_threshold",
                    "set together with slow_call_duration",
                    format!("{v} without it"),
                ));
            }
        }
        if let Some(d) = self.slow_call_duration {
            if d.is_zero() {
                return Err(ConfigError::new(
                    "circuit_breaker.slow_call_duration",
                    "> 0",
                    d,
                ));
            }
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("circuit_breaker.minimum_calls", "> 0", 0));
        }
        match self.window {
            Window::Count(n) if !(1..=MAX_COUNT).contains(&n) => {
                return Err(ConfigError::new(
                    "circuit_breaker.sliding_window",
                    format!("a count in 1..={MAX_COUNT}"),
                    n,
                ));
            }
            Window::Time(d) if d.is_zero() || Window::secs(d) > MAX_SECS => {
                return Err(ConfigError::new(
                    "circuit_breaker.sliding_window",
                    format!("a time in 1s..={MAX_SECS}s"),
                    d,
                ));
            }
            _ => {}
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "circuit_breaker.consecutive_failures",
                "> 0",
                0,
            ));
        }
        let wait = self.wait_in_open;
        if wait.is_zero() || wait > MAX_WAIT {
            return Err(ConfigError::new(
                "circuit_breaker.wait_in_open",
                "> 0 and at most a year",
                wait,
            ));
        }
        if let Some((multiplier, max)) = self.backoff {
            if !multiplier.is_finite() || multiplier < 1.0 {
                return Err(ConfigError::new(
                    "circuit_breaker.wait_in_open_backoff",
                    "a multiplier >= 1.0",
                    multiplier,
                ));
            }
            if max < wait || max > MAX_WAIT {
                return Err(ConfigError::new(
                    "circuit_breaker.wait_in_open_backoff",
                    format!("a max >= wait_in_open ({wait:?}) and at most a year"),
                    max,
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                "circuit_breaker.wait_in_open_jitter",
                "0.0..=1.0",
                self.jitter,
            ));
        }
        if !(1..=MAX_HALF_OPEN).contains(&self.half_open_calls) {
            return Err(ConfigError::new(
                "circuit_breaker.permitted_calls_in_half_open",
                format!("1..={MAX_HALF_OPEN}"),
                self.half_open_calls,
            ));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new("circuit_breaker.max_keys", "> 0", 0));
        }
        let config = Arc::new(Config {
            failure_rate: self.failure_rate,
            slow_call_rate: self.slow_call_rate.unwrap_or(100),
            slow_call_duration: self.slow_call_duration,
            minimum_calls: self.minimum_calls,
            window: self.window,
            consecutive_failures: self.consecutive_failures,
            wait_in_open: wait,
            backoff: self.backoff,
            jitter: self.jitter,
            half_open_calls: self.half_open_calls,
            classifier: self.classifier,
            on_transition: self.on_transition,
        });
        let breakers = Breakers::new(config, self.max_keys);
        let route = match self.key_fn {
            Some(f) => Route::Keyed(f),
            // The layer keeps a clone, so this breaker is never evicted.
            None => Route::Single(breakers.get(DEFAULT_KEY)),
        };
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                breakers,
                route,
                #[cfg(feature = "pingora")]
                peers: Default::default(),
            }),
        })
    }
}

/// Inspects and steers a layer's breakers at run time (from [`CircuitBreakerLayer::handle`]).
///
/// Keys are those of the key function, or [`DEFAULT_KEY`] for a layer without one.
#[derive(Clone, Debug)]
pub struct CircuitBreakerHandle {
    breakers: Breakers,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(breakers: Breakers) -> Self {
        CircuitBreakerHandle { breakers }
    }

    /// The state of the breaker for `key`, if it exists.
    pub fn state(&self, key: &str) -> Option<State> {
        self.breakers.find(key).map(|b| b.state())
    }

    /// The window counts of the breaker for `key`, if it exists.
    pub fn metrics(&self, key: &str) -> Option<Metrics> {
        self.breakers.find(key).map(|b| b.metrics(Instant::now()))
    }

    /// Rejects every call for `key` (creating its breaker if needed) until changed again.
    pub fn force_open(&self, key: &str) {
        self.breakers.get(key).force_open();
    }

    /// Admits every call for `key` and keeps counting, never opening.
    pub fn force_closed(&self, key: &str) {
        self.breakers.get(key).force_closed();
    }

    /// Admits every call for `key` and records nothing.
    pub fn disable(&self, key: &str) {
        self.breakers.get(key).disable();
    }

    /// Puts the breaker for `key` back to `Closed` with an empty window.
    pub fn reset(&self, key: &str) {
        if let Some(b) = self.breakers.find(key) {
            b.reset();
        }
    }

    /// The keys that have a breaker.
    pub fn keys(&self) -> Vec<String> {
        self.breakers.keys()
    }

    /// The breaker for `key`, if it exists.
    pub fn breaker(&self, key: &str) -> Option<Breaker> {
        self.breakers.find(key)
    }
}
