//! [`RetryLayer`] and its builder.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tower_layer::Layer;

use super::backoff::Backoff;
use super::budget::Budget;
use super::error::ConfigError;
use super::policy::RetryPolicy;
use super::Retry;
use crate::{Layered, TimeSource};

/// Everything a [`Retry`] service and its futures read; one per layer, behind an `Arc`.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) policy: RetryPolicy,
    pub(crate) backoff: Backoff,
    /// Its own `Arc`, handed out by [`RetryLayer::budget`](super::RetryLayer::budget).
    pub(crate) budget: Arc<Budget>,
    /// Told about granted retries and budget refusals.
    pub(crate) observer: crate::observe::MaybeObserver,
}

impl Shared {
    /// The one place a retry is granted, in both hosts: after `retries_done` retries, one more
    /// if the policy has retries left and the budget a token, waiting `retry_after` (a server's
    /// `Retry-After`) or the backoff. Returns when the next attempt may start; `None` (and
    /// nothing withdrawn) when it may not, including a wait past the clock's range
    /// (`max_retry_after(Duration::MAX)` and a huge `Retry-After`).
    pub(crate) fn grant_retry(
        &self,
        retries_done: u32,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Instant> {
        if !self.policy.has_retries_left(retries_done) {
            tracing::debug!(retries = retries_done, "retries exhausted");
            return None;
        }
        let delay = retry_after.unwrap_or_else(|| self.backoff.delay(retries_done));
        let Some(at) = now.checked_add(delay) else {
            tracing::debug!(?delay, "retry delay out of range; not retrying");
            return None;
        };
        if !self.budget.try_withdraw_at(now) {
            tracing::debug!("retry budget exhausted; not retrying");
            if let Some(observer) = &self.observer {
                observer.retry_budget_exhausted();
            }
            return None;
        }
        tracing::debug!(retry = retries_done + 1, ?delay, "retrying");
        if let Some(observer) = &self.observer {
            observer.retried();
        }
        Some(at)
    }
}

/// Applies [`Retry`] to a service. See the [module docs](super) for the semantics.
///
/// Every service made by one layer value (and every clone of them) shares one retry
/// [`Budget`]. Configured in one place, [`RetryLayer::builder`]; [`crate::retry()`] is the short
/// form with the defaults.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    pub(crate) shared: Arc<Shared>,
}

impl RetryLayer {
    /// Up to `max_retries` retries (so `max_retries + 1` attempts) with the defaults: statuses
    /// 502/503/504, idempotent methods only, backoff 25 ms doubling to 1 s with full jitter,
    /// `Retry-After` honoured up to 5 s, budget 20 % of requests plus 10 retries/s over 10 s,
    /// 64 KiB body replay, no per-try timeout. What [`crate::retry()`] returns; the defaults
    /// need no checking.
    pub(crate) fn with_defaults(max_retries: u32) -> Self {
        RetryLayer {
            shared: Arc::new(Shared {
                policy: RetryPolicy::new(max_retries),
                backoff: Backoff::default(),
                budget: Arc::new(Budget::default()),
                observer: None,
            }),
        }
    }

    /// Starts a builder with up to `max_retries` retries and the defaults listed at
    /// [`crate::retry()`]; every knob is set there and checked by [`RetryBuilder::build`].
    pub fn builder(max_retries: u32) -> RetryBuilder {
        RetryBuilder {
            policy: RetryPolicy::new(max_retries),
            backoff_base: Backoff::DEFAULT_BASE,
            backoff_cap: Backoff::DEFAULT_CAP,
            jitter: true,
            budget_ratio: Budget::DEFAULT_RATIO,
            budget_min_per_sec: Budget::DEFAULT_MIN_PER_SEC,
            budget_window: Budget::DEFAULT_WINDOW,
            clock: TimeSource::Auto,
            observer: None,
        }
    }

    /// The rules, for a host that drives retries itself (the Pingora proxy).
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.shared.backoff
    }

    /// The retry budget shared by every service of this layer.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.shared.budget
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Layered::wrap(self.clone(), inner)
    }
}

/// Builds a [`RetryLayer`] with validated settings. Start with [`RetryLayer::builder`].
#[derive(Debug, Clone)]
pub struct RetryBuilder {
    policy: RetryPolicy,
    backoff_base: Duration,
    backoff_cap: Duration,
    jitter: bool,
    budget_ratio: f32,
    budget_min_per_sec: u32,
    budget_window: Duration,
    clock: TimeSource,
    observer: crate::observe::MaybeObserver,
}

impl RetryBuilder {
    /// Also retries non-idempotent requests (e.g. `POST`) that carry an `Idempotency-Key`
    /// header. Off by default.
    pub fn retry_with_idempotency_key(mut self, enabled: bool) -> Self {
        self.policy.retry_with_idempotency_key = enabled;
        self
    }

    /// Replaces the retryable statuses (default `502`, `503`, `504`).
    pub fn retry_on_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.policy.statuses = statuses.into_iter().collect();
        self
    }

    /// The most request-body bytes kept for replay (default 64 KiB); a longer body is sent once
    /// and never retried.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.policy.max_replay_body = bytes;
        self
    }

    /// The longest `Retry-After` honoured (default 5 s); a response asking for longer is
    /// returned as is.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.policy.max_retry_after = max;
        self
    }

    /// Each attempt may take at most `timeout`; a slower attempt is abandoned and counts as a
    /// retryable failure, and when no retry follows the answer is `504 Gateway Timeout`. Must be
    /// > 0. None by default.
    pub fn per_try_timeout(mut self, timeout: Duration) -> Self {
        self.policy.per_try_timeout = Some(timeout);
        self
    }

    /// Backoff ceiling for the first retry (default 25 ms), doubling per retry up to `cap`.
    pub fn backoff_base(mut self, base: Duration) -> Self {
        self.backoff_base = base;
        self
    }

    /// The longest backoff delay (default 1 s). Must be >= the base.
    pub fn backoff_cap(mut self, cap: Duration) -> Self {
        self.backoff_cap = cap;
        self
    }

    /// Full jitter on (default) or off; off makes the backoff schedule exactly
    /// `min(cap, base * 2^n)`.
    pub fn jitter(mut self, enabled: bool) -> Self {
        self.jitter = enabled;
        self
    }

    /// Retries allowed per original request (default 0.2), in `[0, 1000]`, plus a floor of
    /// `min_per_sec` retries per second averaged over the window (default 10). See [`Budget`].
    pub fn budget(mut self, ratio: f32, min_per_sec: u32) -> Self {
        self.budget_ratio = ratio;
        self.budget_min_per_sec = min_per_sec;
        self
    }

    /// The budget's sliding window (default 10 s), in `[1 s, 60 s]`.
    pub fn budget_window(mut self, window: Duration) -> Self {
        self.budget_window = window;
        self
    }

    /// Tells `observer` about every granted retry and every retry the budget refused, e.g. the
    /// `obs` feature's `Metrics`. None by default.
    pub fn observer(mut self, observer: Arc<dyn crate::observe::Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The clock the budget reads (default [`TimeSource::Auto`]: tokio's when its clock is
    /// paused where the layer is built, as in a `start_paused` test; the CPU's counter
    /// otherwise). See [`TimeSource`].
    pub fn clock(mut self, clock: TimeSource) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and value: `per_try_timeout` of zero, a backoff base
    /// above the cap, a budget ratio outside `[0, 1000]` or a window outside `[1 s, 60 s]`.
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        if self.policy.per_try_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "retry.per_try_timeout",
                "> 0",
                Duration::ZERO,
            ));
        }
        let backoff = Backoff::new(self.backoff_base, self.backoff_cap)?.with_jitter(self.jitter);
        let budget = Budget::with_clock(
            self.budget_ratio,
            self.budget_min_per_sec,
            self.budget_window,
            self.clock,
        )?;
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                policy: self.policy,
                backoff,
                budget: Arc::new(budget),
                observer: self.observer,
            }),
        })
    }
}
