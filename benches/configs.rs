//! The layer configurations both benches (`layers`, `callgrind`) measure, in one place so the
//! two compare exactly the same things.

use std::sync::Arc;
use std::time::Duration;

use middlewares::circuit_breaker::CircuitBreakerLayer;
use middlewares::rate_limit::RateLimitLayer;
use middlewares::retry::RetryLayer;
use middlewares::timeout::TimeoutLayer;
use middlewares::TimeSource;
use tower::layer::util::{Identity, Stack};
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer as TowerRateLimitLayer};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::retry::{Policy, RetryLayer as TowerRetryLayer};
use tower::timeout::TimeoutLayer as TowerTimeoutLayer;
use tower::ServiceBuilder;

use crate::HUGE_RATE;

/// The deadline every timeout is configured with: never reached.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// A concurrency limit never reached (one call is in flight at a time).
pub const HUGE_CONCURRENCY: usize = 1 << 20;
/// The rate limiters' period.
pub const ONE_SECOND: Duration = Duration::from_secs(1);

/// A tower retry policy that never retries. With `clone_request` it keeps a copy of each
/// request, as any policy that may retry must (and as ours does); without, it is the cheapest
/// possible `Retry`.
#[derive(Debug, Clone, Copy)]
pub struct NeverRetry {
    /// Whether the policy clones every request.
    pub clone_request: bool,
}

impl<Req: Clone, Res, E> Policy<Req, Res, E> for NeverRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        self.clone_request.then(|| req.clone())
    }
}

/// A tower retry policy shaped like ours by default: it clones every request and keeps a
/// retry budget (tower's `TpsBudget`, with our budget's defaults: 10 s window, 10 retries per
/// second, 20 %), depositing every success as tower's budget docs show. It never retries, so
/// the benches measure the path of a request that succeeds at once.
#[derive(Debug, Clone)]
pub struct BudgetedNeverRetry {
    budget: Arc<TpsBudget>,
}

impl Default for BudgetedNeverRetry {
    fn default() -> Self {
        BudgetedNeverRetry {
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        }
    }
}

impl<Req: Clone, Res, E> Policy<Req, Res, E> for BudgetedNeverRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if result.is_ok() {
            self.budget.deposit();
        }
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// `tower_governor` with one global key at [`HUGE_RATE`] per second: it never trips.
pub fn tower_governor_layer() -> tower_governor::GovernorLayer<
    tower_governor::key_extractor::GlobalKeyExtractor,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    axum::body::Body,
> {
    tower_governor::GovernorLayer::new(
        tower_governor::governor::GovernorConfigBuilder::default()
            .period(ONE_SECOND / HUGE_RATE)
            .burst_size(HUGE_RATE)
            .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
            .finish()
            .expect("valid tower_governor config"),
    )
}

/// Our rate limiter at [`HUGE_RATE`] per second: it never trips. Its clock is the default
/// (`TimeSource::Auto`), which is the CPU counter here (the benches do not pause tokio's
/// clock).
pub fn our_rate_limit() -> RateLimitLayer {
    our_rate_limit_on(TimeSource::Auto)
}

/// [`our_rate_limit`] reading `clock`.
pub fn our_rate_limit_on(clock: TimeSource) -> RateLimitLayer {
    RateLimitLayer::builder(HUGE_RATE, ONE_SECOND)
        .clock(clock)
        .build()
        .expect("valid rate limit")
}

/// Our four layers, outermost first: timeout, rate limit, retry, circuit breaker.
pub type OurStack = Stack<
    CircuitBreakerLayer,
    Stack<RetryLayer, Stack<RateLimitLayer, Stack<TimeoutLayer, Identity>>>,
>;

/// [`OurStack`] with limits that never trip.
pub fn our_stack() -> ServiceBuilder<OurStack> {
    ServiceBuilder::new()
        .layer(middlewares::timeout(5_000))
        .layer(our_rate_limit())
        .layer(middlewares::retry(2))
        .layer(middlewares::circuit_breaker(50, 10_000))
}

/// tower's nearest stack: `Timeout`, `ConcurrencyLimit`, `RateLimit`, `Retry`, outermost first.
pub type TowerStack = Stack<
    TowerRetryLayer<NeverRetry>,
    Stack<TowerRateLimitLayer, Stack<ConcurrencyLimitLayer, Stack<TowerTimeoutLayer, Identity>>>,
>;

/// [`TowerStack`] with limits that never trip; `clone_request` as in [`NeverRetry`].
pub fn tower_stack(clone_request: bool) -> ServiceBuilder<TowerStack> {
    ServiceBuilder::new()
        .timeout(DEADLINE)
        .concurrency_limit(HUGE_CONCURRENCY)
        .rate_limit(u64::from(HUGE_RATE), ONE_SECOND)
        .retry(NeverRetry { clone_request })
}

/// tower-resilience's circuit breaker with our short form's settings
/// (`middlewares::circuit_breaker(50, 10_000)`): 50 % over a count window of 20, at least 10
/// calls, 10 s open, 3 trial calls.
pub fn tower_resilience_breaker() -> tower_resilience::circuitbreaker::CircuitBreakerLayer<
    tower_resilience::circuitbreaker::DefaultClassifier,
> {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(20)
        .minimum_number_of_calls(10)
        .wait_duration_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(3)
        .build()
        .expect("valid tower-resilience config")
}
