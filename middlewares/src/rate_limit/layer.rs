//! [`RateLimitLayer`], its builder, and the host-agnostic policy methods
//! ([`RateLimitLayer::key_for`], [`RateLimitLayer::check`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::HeaderMap;
use tokio::time::Instant;
use tower_layer::Layer;

use super::error::{policy_value, quota_value, RATELIMIT, RATELIMIT_POLICY};
use super::gcra::{Gcra, Verdict, MAX_SPAN, UNKNOWN_RESET};
use super::key::{self, IpPrefixes, Key, KeyValue};
use super::limiter::{Limiter, RateLimitStats};
use super::{ConfigError, RateLimit, RateLimited};
use crate::clock::{Clock, TimeSource};
use crate::rejection::ceil_secs;
use crate::RequestInfo;

/// Default bound on the number of keys held in the table ([`RateLimitBuilder::max_keys`]).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// What the limiter decided for one request, from [`RateLimitLayer::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the request now.
    Allow(Quota),
    /// Queue mode: serve the request after `delay` (its slot is already reserved).
    Delay {
        /// How long to hold the request before serving it.
        delay: Duration,
        /// The key's quota after this request (`remaining` is 0).
        quota: Quota,
    },
    /// Refuse the request; answer as [`Rejection`](crate::Rejection) renders it.
    Reject(RateLimited),
}

/// A decision that waits for Redis.
#[cfg(feature = "redis")]
pub(super) type DecisionFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Decision> + Send + 'static>>;

/// [`RateLimitLayer::check_remote`]'s answer.
#[cfg(feature = "redis")]
pub(super) enum Checked {
    /// Decided without a call.
    Now(Decision),
    /// Decided when Redis answers (or the failure policy decides).
    Later(DecisionFuture),
}

/// The state of a key's bucket after an admitted request, for the `RateLimit` header.
///
/// Kept in raw nanoseconds; the accessors convert on demand, so a caller that does not expose
/// headers pays for no division. With the state in Redis (feature `redis`), a request admitted
/// from a lease or by the open failure policy did not see the bucket: its quota is not known,
/// and the accessors return `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    slack: u64,
    interval: u64,
    reset: u64,
}

impl Quota {
    /// Requests the key could still make right now without being delayed or rejected.
    pub fn remaining(&self) -> Option<u32> {
        self.is_known()
            .then(|| u32::try_from(self.slack / self.interval.max(1)).unwrap_or(u32::MAX))
    }

    /// Time until the key's bucket is full again.
    pub fn reset(&self) -> Option<Duration> {
        self.is_known().then(|| Duration::from_nanos(self.reset))
    }

    fn is_known(&self) -> bool {
        self.reset != UNKNOWN_RESET
    }
}

/// Builder returned by [`RateLimitLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a RateLimitLayer"]
pub struct RateLimitBuilder {
    limit: u32,
    period: Duration,
    burst: Option<u32>,
    max_delay: Option<Duration>,
    max_queue: Option<u32>,
    key: Key,
    trusted_hops: usize,
    prefixes: IpPrefixes,
    max_keys: usize,
    expose_headers: bool,
    dry_run: bool,
    clock: TimeSource,
    #[cfg(feature = "redis")]
    store: Option<super::redis::RedisStore>,
    observer: crate::observe::MaybeObserver,
}

impl RateLimitBuilder {
    /// Keep the limiter's state in Redis, shared by every instance built with the same store
    /// settings (feature `redis`): see [`rate_limit::redis`](super::redis). Every other
    /// setting keeps its meaning; `max_keys` then sizes the local limiter of
    /// [`FailurePolicy::Local`](super::redis::FailurePolicy::Local).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: super::redis::RedisStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Bucket capacity: how many requests a key may send at once after being idle. Default: the
    /// `limit`. Must be > 0, and `(burst + 1) × period / limit` at most about 146 years (the
    /// span the limiter's nanosecond arithmetic holds exactly; [`build`](Self::build) refuses
    /// more rather than stop limiting).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Queue mode: instead of rejecting a request that finds the bucket empty, hold it until its
    /// slot comes up, if that is at most `max_delay` away. Requests that would wait longer are
    /// rejected with `429`. A wait of more than about 146 years is taken as that long.
    ///
    /// nginx `limit_req zone=… rate=R burst=B delay=D` (D < B) is
    /// `builder(R, 1 s).burst(D + 1).queue((B − D) / R s)`, or with
    /// [`max_queue(B − D)`](Self::max_queue): the first D + 1 requests pass at once, the next
    /// B − D wait. See the [module docs](super#nginx-limit_req).
    pub fn queue(mut self, max_delay: Duration) -> Self {
        self.max_delay = Some(max_delay);
        self
    }

    /// Queue mode: hold at most `n` requests per key waiting for their slot; the next one is
    /// rejected. Combined with [`queue`](Self::queue), the tighter bound wins.
    ///
    /// This is nginx's `burst=` only with [`burst(1)`](Self::burst): nginx
    /// `rate=R burst=B delay=D` is `builder(R, 1 s).burst(D + 1).max_queue(B − D)` (without
    /// `delay=`, D = 0: `burst(1).max_queue(B)`). See the
    /// [module docs](super#nginx-limit_req).
    pub fn max_queue(mut self, n: u32) -> Self {
        self.max_queue = Some(n);
        self
    }

    /// What requests are counted against (default [`Key::Global`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// Shorthand for `.key(Key::custom(f))`: a closure returning the key, or `None` to exempt the
    /// request from limiting.
    pub fn key_fn<F>(self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
    {
        self.key(Key::custom(f))
    }

    /// With [`Key::ClientIp`], trust `n` reverse proxies in front of this server: the client
    /// is the `n`-th address from the right of the `X-Forwarded-For` list (several headers
    /// count as one list, in order). `0` (the default) ignores `X-Forwarded-For`.
    ///
    /// This trusts the `X-Forwarded-For` the request arrives with: the `n` rightmost entries
    /// are taken to have been appended by your own proxies, one each. A client can send any
    /// `X-Forwarded-For` it likes, and a proxy that appends keeps it in front of its own entry,
    /// so the count from the right is what makes this safe, and only when each of the `n`
    /// proxies *appends* the address it received the request from (nginx
    /// `$proxy_add_x_forwarded_for`, Pingora's default) and every request comes through them.
    /// A proxy that passes the header on untouched, or replaces it with the client's own, or a
    /// path that bypasses the proxies, lets a client choose its key, and so its bucket.
    ///
    /// When the list has fewer than `n` entries (the request did not pass through all the
    /// proxies, or a proxy did not append), or the `n`-th entry is not an address, the
    /// connection's address is used (logged at debug level): then every such request counts
    /// against the address of the proxy it came from.
    pub fn trusted_hops(mut self, n: usize) -> Self {
        self.trusted_hops = n;
        self
    }

    /// Bound on the keys held in memory (default [`DEFAULT_MAX_KEYS`]). When the table is full,
    /// a new key takes the place of an idle key (bucket full again) if one is among the least
    /// recently used, else of the least recently used key, whose debt is then forgotten: a new
    /// client is always counted in a bucket of its own. Size it above the number of clients
    /// active within one refill of a bucket. See the [module docs](super#bounded-key-memory). Must be > 0.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// With [`Key::ClientIp`], key IPv6 clients by the first `bits` of their address (default
    /// 64: one bucket per /64, the block one host or home is usually given, so a client cannot
    /// get a new bucket by picking another address of its own block). 128 keys each address;
    /// a shorter prefix (56, 48) groups whole sites. Must be ≤ 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.prefixes.v6 = bits;
        self
    }

    /// With [`Key::ClientIp`], key IPv4 clients by the first `bits` of their address (default
    /// 32: one bucket per address). IPv4-mapped IPv6 addresses count as IPv4. Must be ≤ 32.
    pub fn ipv4_prefix(mut self, bits: u8) -> Self {
        self.prefixes.v4 = bits;
        self
    }

    /// Add `RateLimit-Policy` and `RateLimit` headers to admitted responses too (default off,
    /// which keeps the common path free of header formatting). `429` answers always carry them.
    pub fn expose_headers(mut self, expose: bool) -> Self {
        self.expose_headers = expose;
        self
    }

    /// Count and log (at warn level) the requests that would be delayed or rejected, but serve
    /// every request at once (default off).
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Tells `observer` about every request this limiter refuses (not the dry run's), e.g. the
    /// `obs` feature's `Metrics`. None by default.
    pub fn observer(mut self, observer: std::sync::Arc<dyn crate::observe::Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The clock the limiter reads (default [`TimeSource::Auto`]: tokio's when its clock is
    /// paused where the layer is built, as in a `start_paused` test; the CPU's counter
    /// otherwise). See [`TimeSource`].
    pub fn clock(mut self, clock: TimeSource) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// When `limit`, `period`, `burst` or `max_keys` is zero; when one token's interval
    /// (`period / limit`) or the burst's span (`(burst + 1)` intervals) is longer than about
    /// 146 years (`rate_limit.period`, `rate_limit.burst`), which the limiter could not count
    /// exactly; when a prefix is longer than its address. The error names the field and the
    /// value.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::new("rate_limit.limit", "> 0", self.limit));
        }
        if self.period.is_zero() {
            return Err(ConfigError::new("rate_limit.period", "> 0", self.period));
        }
        let burst = self.burst.unwrap_or(self.limit);
        if burst == 0 {
            return Err(ConfigError::new("rate_limit.burst", "> 0", burst));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new(
                "rate_limit.max_keys",
                "> 0",
                self.max_keys,
            ));
        }
        if self.prefixes.v4 > 32 {
            return Err(ConfigError::new(
                "rate_limit.ipv4_prefix",
                "0..=32",
                self.prefixes.v4,
            ));
        }
        if self.prefixes.v6 > 128 {
            return Err(ConfigError::new(
                "rate_limit.ipv6_prefix",
                "0..=128",
                self.prefixes.v6,
            ));
        }
        let interval = span_checked(self.period, self.limit, burst)?;
        let by_delay = self.max_delay.map(nanos);
        let by_queue = self
            .max_queue
            .map(|n| u64::from(n).saturating_mul(interval));
        let max_delay = match (by_delay, by_queue) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 0,
        }
        // No request waits a century; beyond that the TAT could saturate (see `MAX_SPAN`).
        .min(MAX_SPAN);
        let window_secs = ceil_secs(self.period).max(1);
        let limiter = Limiter::new(Gcra::new(interval, burst, max_delay), self.max_keys);
        #[cfg(feature = "redis")]
        let remote = match self.store {
            Some(store) => Some(super::redis::Remote::new(
                store,
                interval,
                burst,
                max_delay,
                self.max_keys,
            )?),
            None => None,
        };
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                #[cfg(feature = "redis")]
                remote,
                limiter,
                clock: Clock::new(self.clock),
                policy: policy_value(self.limit, window_secs),
                key: self.key,
                trusted_hops: self.trusted_hops,
                prefixes: self.prefixes,
                expose_headers: self.expose_headers,
                dry_run: self.dry_run,
                limit: self.limit,
                burst,
                period: self.period,
                window_secs,
                max_delay: Duration::from_nanos(max_delay),
                observer: self.observer,
            }),
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The emission interval `period / limit` in ns, once the interval and the burst's span
/// `(burst + 1) × interval` are known to fit in [`MAX_SPAN`]. Past it the tolerance would
/// saturate and the limiter would admit everything, so such a setting is refused, naming the
/// period when no burst could fit and the burst otherwise.
fn span_checked(period: Duration, limit: u32, burst: u32) -> Result<u64, ConfigError> {
    let interval = period.as_nanos() / u128::from(limit);
    let max_span = u128::from(MAX_SPAN);
    // The smallest burst (1) spans two intervals.
    if interval.saturating_mul(2) > max_span {
        return Err(ConfigError::new(
            "rate_limit.period",
            format!("at most ~73 years × limit ({limit}), so that a burst of 1 fits in ~146"),
            period,
        ));
    }
    if (u128::from(burst) + 1) * interval > max_span {
        let max_burst = max_span / interval.max(1) - 1;
        return Err(ConfigError::new(
            "rate_limit.burst",
            format!(
                "≤ {max_burst} at {limit} per {period:?} (burst × period / limit at most ~146 years)"
            ),
            burst,
        ));
    }
    // interval ≤ MAX_SPAN / 2 fits, and is at least 1 so a token always costs time.
    Ok((interval as u64).max(1))
}

#[derive(Debug)]
pub(super) struct Shared {
    #[cfg(feature = "redis")]
    remote: Option<super::redis::Remote>,
    limiter: Limiter,
    clock: Clock,
    policy: HeaderValue,
    key: Key,
    trusted_hops: usize,
    prefixes: IpPrefixes,
    expose_headers: bool,
    dry_run: bool,
    limit: u32,
    burst: u32,
    period: Duration,
    window_secs: u64,
    max_delay: Duration,
    observer: crate::observe::MaybeObserver,
}

/// Limits the request rate of the inner service with a token bucket (GCRA), globally or per key.
/// See the [module docs](super).
///
/// Cloning the layer, or any service built from it, shares one limiter: the limit holds across
/// every clone, and across a Pingora proxy built from the same layer value.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// Starts a builder: a token bucket of capacity `limit`, refilled at `limit` tokens per
    /// `period`, one global key, rejecting mode.
    pub fn builder(limit: u32, period: Duration) -> RateLimitBuilder {
        RateLimitBuilder {
            limit,
            period,
            burst: None,
            max_delay: None,
            max_queue: None,
            key: Key::Global,
            trusted_hops: 0,
            prefixes: IpPrefixes::default(),
            max_keys: DEFAULT_MAX_KEYS,
            expose_headers: false,
            dry_run: false,
            clock: TimeSource::Auto,
            #[cfg(feature = "redis")]
            store: None,
            observer: None,
        }
    }

    /// The key `info` is counted against, or `None` when a [`Key::Custom`] closure exempted it.
    ///
    /// Host-agnostic step 1 of 2: the tower service and the Pingora host's `request_filter`
    /// both call this, then [`check`](Self::check). The client address is looked up in the
    /// request extensions (see [`Key::ClientIp`]).
    pub fn key_for<'a>(&self, info: &RequestInfo<'a>) -> Option<KeyValue<'a>> {
        self.key_for_peer(info, None)
    }

    /// Like [`key_for`](Self::key_for), but with the client's address given directly (when
    /// `Some`) instead of looked up in the request extensions: for a host that knows the peer
    /// from its session and would otherwise have to insert it into the extensions.
    /// `X-Forwarded-For` still wins when [`trusted_hops`](RateLimitBuilder::trusted_hops) is set.
    pub fn key_for_peer<'a>(
        &self,
        info: &RequestInfo<'a>,
        peer: Option<IpAddr>,
    ) -> Option<KeyValue<'a>> {
        let s = &*self.shared;
        key::key_for(&s.key, s.trusted_hops, s.prefixes, info, peer)
    }

    /// Counts one request of `key` now, on the limiter's [clock](RateLimitBuilder::clock), and
    /// decides.
    ///
    /// Host-agnostic step 2 of 2. An [`Allow`](Decision::Allow) or [`Delay`](Decision::Delay)
    /// has already taken its token or slot; a [`Reject`](Decision::Reject) has not. In dry-run
    /// mode every decision comes back as `Allow` (the would-be delays and rejections are
    /// counted and logged).
    pub fn check_now(&self, key: &KeyValue<'_>) -> Decision {
        self.check_nanos(key, self.shared.clock.now_nanos())
    }

    /// Counts one request of `key` and decides, asking Redis when the layer keeps its state
    /// there (see [`RateLimitBuilder::redis`]); without a store it is
    /// [`check_now`](Self::check_now). With a store, [`check_now`](Self::check_now) and
    /// [`check`](Self::check) count in this process only.
    pub async fn check_async(&self, key: &KeyValue<'_>) -> Decision {
        #[cfg(feature = "redis")]
        if self.has_remote() {
            return match self.check_remote(key) {
                Checked::Now(decision) => decision,
                Checked::Later(decision) => decision.await,
            };
        }
        self.check_now(key)
    }

    /// Like [`check_now`](Self::check_now), at a tokio instant read by the caller: for a host
    /// that reads the time once per request for several uses, and for tests.
    pub fn check(&self, key: &KeyValue<'_>, now: Instant) -> Decision {
        self.check_nanos(key, self.shared.clock.nanos(now))
    }

    /// [`check`](Self::check) at `now` on the limiter's timeline.
    pub(super) fn check_nanos(&self, key: &KeyValue<'_>, now: u64) -> Decision {
        self.decide(key, self.shared.limiter.step(key, now))
    }

    /// Whether the state lives in Redis.
    #[cfg(feature = "redis")]
    #[inline]
    pub(super) fn has_remote(&self) -> bool {
        self.shared.remote.is_some()
    }

    /// One request of `key` with the state in Redis: decided now when the instance knows
    /// enough (a remembered rejection, a leased token, Redis down), else a future that asks
    /// Redis. Without a store, [`check_now`](Self::check_now).
    #[cfg(feature = "redis")]
    pub(super) fn check_remote(&self, key: &KeyValue<'_>) -> Checked {
        let Some(remote) = &self.shared.remote else {
            return Checked::Now(self.check_now(key));
        };
        match remote.check(key) {
            super::redis::Local::Decided(verdict) => {
                Checked::Now(self.decide(key, self.shared.limiter.count(verdict)))
            }
            super::redis::Local::Call(call) => {
                let layer = self.clone();
                let key = key.clone().into_owned();
                Checked::Later(Box::pin(async move {
                    let Some(remote) = &layer.shared.remote else {
                        return layer.check_now(&key);
                    };
                    let verdict = remote.call(call, &key).await;
                    layer.decide(&key, layer.shared.limiter.count(verdict))
                }))
            }
        }
    }

    /// Counters of the Redis store (`None` without one).
    #[cfg(feature = "redis")]
    pub fn redis_stats(&self) -> Option<super::redis::RedisStats> {
        self.shared.remote.as_ref().map(super::redis::Remote::stats)
    }

    /// The clock the limiter reads: [`TimeSource::Tokio`] or [`TimeSource::Counter`] (what
    /// [`Auto`](TimeSource::Auto) resolved to when the layer was built).
    pub fn clock(&self) -> TimeSource {
        self.shared.clock.kind()
    }

    /// Now on the limiter's timeline when it reads the CPU's counter; `None` when it reads
    /// tokio's clock (the tower service then takes the time the layers around it read).
    #[inline]
    pub(super) fn counter_nanos(&self) -> Option<u64> {
        self.shared.clock.counter_nanos()
    }

    /// A tokio instant on the limiter's timeline.
    #[inline]
    pub(super) fn nanos(&self, now: Instant) -> u64 {
        self.shared.clock.nanos(now)
    }

    /// [`check`](Self::check) of the global key, at `now` on the limiter's timeline, for the
    /// tower service's fast path: `None` when the request is admitted and nothing else is to
    /// be done (no headers to expose), so the common answer builds no [`Decision`].
    #[inline]
    pub(super) fn check_global(&self, now: u64) -> Option<Decision> {
        let s = &*self.shared;
        let verdict = s.limiter.step_global(now);
        if matches!(verdict, Verdict::Allow { .. }) && !s.expose_headers {
            return None;
        }
        Some(self.decide(&KeyValue::Global, verdict))
    }

    /// The decision for `verdict`, the outcome of counting one request of `key`.
    fn decide(&self, key: &KeyValue<'_>, verdict: Verdict) -> Decision {
        let s = &*self.shared;
        let interval = s.limiter.gcra().interval();
        let decision = match verdict {
            Verdict::Allow { slack, reset } => {
                return Decision::Allow(Quota {
                    slack,
                    interval,
                    reset,
                })
            }
            Verdict::Delay { delay, reset } => Decision::Delay {
                delay: Duration::from_nanos(delay),
                quota: Quota {
                    slack: 0,
                    interval,
                    reset,
                },
            },
            Verdict::Reject { retry_after, reset } => Decision::Reject(RateLimited::new(
                Duration::from_nanos(retry_after),
                Duration::from_nanos(reset),
                s.limit,
                s.window_secs,
            )),
        };
        match decision {
            Decision::Delay { delay, quota } if s.dry_run => {
                tracing::warn!(%key, ?delay, "rate limit (dry run): request would be delayed");
                Decision::Allow(quota)
            }
            Decision::Reject(err) if s.dry_run => {
                tracing::warn!(%key, retry_after = ?err.retry_after(), "rate limit (dry run): request would be rejected");
                Decision::Allow(Quota {
                    slack: 0,
                    interval,
                    reset: nanos(err.reset()),
                })
            }
            Decision::Delay { delay, .. } => {
                tracing::debug!(%key, ?delay, "rate limit: delaying request");
                decision
            }
            Decision::Reject(err) => {
                tracing::debug!(%key, retry_after = ?err.retry_after(), "rate limit: rejecting request");
                if let Some(observer) = &s.observer {
                    observer.rate_limited();
                }
                decision
            }
            Decision::Allow(_) => decision,
        }
    }

    /// The [`RATELIMIT_POLICY`] header value, and the [`RATELIMIT`] one for an admitted
    /// request's `quota` when that is known (a made-up `r=0` would tell a client to stop while
    /// its bucket has tokens left).
    pub fn quota_headers(&self, quota: &Quota) -> (HeaderValue, Option<HeaderValue>) {
        let quota = quota
            .remaining()
            .zip(quota.reset())
            .map(|(remaining, reset)| quota_value(remaining, reset));
        (self.shared.policy.clone(), quota)
    }

    /// Inserts [`quota_headers`](Self::quota_headers) into `headers` when
    /// [`expose_headers`](RateLimitBuilder::expose_headers) is on; does nothing otherwise.
    pub fn write_quota_headers(&self, quota: &Quota, headers: &mut HeaderMap) {
        if self.shared.expose_headers {
            let (policy, quota) = self.quota_headers(quota);
            headers.insert(RATELIMIT_POLICY, policy);
            if let Some(quota) = quota {
                headers.insert(RATELIMIT, quota);
            }
        }
    }

    /// Counters and the current number of keys.
    pub fn stats(&self) -> RateLimitStats {
        self.shared.limiter.stats()
    }

    /// Drops every key whose bucket is full again at `now`; returns how many. Optional: a new key
    /// in a full shard takes an idle key's place by itself; this only returns the memory of
    /// keys that went idle (see the [module docs](super#bounded-key-memory)).
    pub fn evict_idle(&self, now: Instant) -> usize {
        let s = &*self.shared;
        s.limiter.evict_idle(s.clock.nanos(now))
    }

    /// The configured `limit` (tokens per `period`).
    pub fn limit(&self) -> u32 {
        self.shared.limit
    }

    /// The configured refill period.
    pub fn period(&self) -> Duration {
        self.shared.period
    }

    /// The bucket capacity.
    pub fn burst(&self) -> u32 {
        self.shared.burst
    }

    /// The longest a request may be held in queue mode (`Duration::ZERO` in rejecting mode).
    pub fn max_delay(&self) -> Duration {
        self.shared.max_delay
    }

    /// Whether every request counts in the one global bucket (no key to compute).
    pub(super) fn is_global(&self) -> bool {
        matches!(self.shared.key, Key::Global)
    }

    /// Whether admitted responses carry the `RateLimit` headers.
    pub fn exposes_headers(&self) -> bool {
        self.shared.expose_headers
    }

    /// Whether the layer only counts and logs.
    pub fn is_dry_run(&self) -> bool {
        self.shared.dry_run
    }

    /// Time between two tokens (`period / limit`).
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.shared.limiter.gcra().interval())
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.clone())
    }
}
