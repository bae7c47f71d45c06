//! One rate limit shared by many instances: the limiter's state in Redis (feature `redis`).
//!
//! [`RateLimitBuilder::redis`](super::RateLimitBuilder::redis) gives a [`RateLimitLayer`]
//! a [`RedisStore`]: every decision the in-process limiter would make (GCRA, burst, keys, queue
//! mode, `429` + `Retry-After` + `RateLimit` headers, dry run) is then made by Redis, in one Lua
//! script run atomically on the server's clock (`TIME`), so the instances' clocks do not matter
//! and N instances behind a load balancer share one limit instead of admitting N times it. The
//! layer works in both hosts: the tower service waits for the answer in its response future, the
//! Pingora host returns [`Admission::Pending`](crate::proxy_host::Admission::Pending) from
//! `request_filter`.
//!
//! # Keys
//! Each bucket is one Redis key, `{<prefix>:<kind>:<key>}` (`g` global, `u` unknown, `i` client
//! network, `b` header or custom bytes), holding the bucket's theoretical arrival time and
//! expiring when the bucket is full again, so idle keys cost Redis no memory. The braces make the
//! whole name the hash tag, and each script touches one key, so it runs on one node of a Redis
//! Cluster. Two layers with different limits need different [prefixes](RedisStoreBuilder::prefix).
//!
//! # Cost control
//! - **Over-limit cache**: a key Redis rejected is remembered by the instance until the time
//!   Redis named (its `Retry-After`, less the queue's maximum delay in queue mode); its requests
//!   are rejected locally until then, with the same headers, so a client hammering past its
//!   limit does not turn into Redis calls (as Envoy's over-limit cache).
//! - **Lease mode** ([`lease`](RedisStoreBuilder::lease)): one call takes up to `n` tokens; the
//!   instance spends the other `n − 1` locally. See the bound below.
//! - **One multiplexed connection** (redis' `ConnectionManager`): concurrent calls are
//!   pipelined on it, and it reconnects by itself.
//!
//! ## Exact mode and lease mode
//! Without a lease (the default) every admitted request is one Redis call and the limit holds
//! exactly across instances. With `lease(n)` an instance asks for `n` tokens at a time and keeps
//! at most `n − 1` unspent per key. Redis still grants tokens by the same GCRA, so in any window
//! it grants no more than the single-process limit would admit; an instance can only spend,
//! inside a window, tokens it was granted *before* the window and still held at its start. So
//! for every key and every window, admitted ≤ (what one limiter admits in that window) +
//! `instances × (n − 1)`. Tokens a lease leaves unspent (expired after
//! [`lease_ttl`](RedisStoreBuilder::lease), or held by an instance that gets no more requests
//! for the key) are lost, which errs the other way: fewer admitted. Lease mode suits high
//! per-key rates where a few requests of slack are acceptable; keys with small limits (10 per
//! minute) want exact mode. Lease mode is for the rejecting mode only (no queue).
//!
//! # When Redis fails
//! Every call has a timeout ([`call_timeout`](RedisStoreBuilder::call_timeout), 5 ms by
//! default). A call that fails or times out marks Redis down: for a back-off (50 ms, doubling to
//! 2 s) no request calls it; then one request probes it, and the first success brings it back.
//! While it is down, and for the request whose call failed, the [`FailurePolicy`] decides:
//! admit (open, the default), reject (closed), or count in a local limiter sized for one of N
//! instances. So a Redis that stays down costs a request at most one call timeout, and only the
//! requests that find the back-off over. The choice is logged when the layer is built; every
//! transition (down, still down, recovered) is logged and counted in [`RedisStats`].
//!
//! A call that timed out may still have been run by Redis: its token is then spent without the
//! request being admitted by it (the failure policy decided instead).
//!
//! # Headers
//! With [`expose_headers`](super::RateLimitBuilder::expose_headers), a response whose request
//! Redis counted carries Redis' `RateLimit` quota (in lease mode, after the lease was taken). One
//! admitted without a call (a leased token, the open failure policy) carries `RateLimit-Policy`
//! only: its [`Quota`](super::Quota) is not known. Rejections always carry both.
//!
//! When to choose which mode, and what an outage does, at more length: `docs/redis-rate-limit.md`
//! in the repository; measured costs: `BENCHMARKS.md`.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use middlewares::rate_limit::redis::{FailurePolicy, RedisStore};
//! use middlewares::rate_limit::{Key, RateLimitLayer};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Inside a tokio runtime: the store's connection runs on it.
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("api")
//!     .on_failure(FailurePolicy::Local { instances: 4 })
//!     .build()?;
//! let limiter = RateLimitLayer::builder(100, Duration::from_secs(1))
//!     .key(Key::ClientIp)
//!     .redis(store)
//!     .build()?;
//! // `limiter` goes into an axum `ServiceBuilder` or a Pingora proxy as before; every
//! // instance built like this shares the one limit.
//! # let _ = limiter; Ok(()) }
//! ```

mod health;
mod local;
mod script;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use self::health::{Gate, Health, Transition};
use self::local::{Hint, LocalTable};
use self::script::{GcraScript, Params};
use super::gcra::{Gcra, Verdict};
use super::key::KeyValue;
use super::limiter::Limiter;
use super::ConfigError;
#[cfg(doc)]
use super::RateLimitLayer;

/// Default [`RedisStoreBuilder::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(5);

/// What the layer decides while Redis cannot be asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit the request (counted in [`RedisStats::failed_open`]). The default: an outage of
    /// the limiter's store does not become an outage of the service.
    #[default]
    Open,
    /// Reject the request with `429` (counted in [`RedisStats::failed_closed`]).
    Closed,
    /// Count the request in an in-process limiter of `limit / instances` per period (and
    /// `burst / instances`, rounded up), so `instances` proxies together stay near the limit
    /// (counted in [`RedisStats::fell_back`]).
    Local {
        /// How many instances share the limit.
        instances: u32,
    },
}

/// Connection and policy of a Redis-backed rate limit; give it to
/// [`RateLimitBuilder::redis`](super::RateLimitBuilder::redis). Cloning shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<StoreConfig>,
}

/// The connection: one server, or a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(::redis::cluster_async::ClusterConnection),
}

struct StoreConfig {
    conn: Conn,
    prefix: String,
    call_timeout: Duration,
    failure: FailurePolicy,
    lease: u32,
    lease_ttl: Duration,
    max_local_keys: usize,
    backoff: (Duration, Duration),
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &*self.inner;
        f.debug_struct("RedisStore")
            .field("prefix", &c.prefix)
            .field("call_timeout", &c.call_timeout)
            .field("failure", &c.failure)
            .field("lease", &c.lease)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Starts a builder for the Redis at `url` (`redis://host:port/db`, `unix:///path`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            #[cfg(feature = "redis-cluster")]
            cluster: None,
            prefix: String::from("rl"),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            failure: FailurePolicy::Open,
            lease: 1,
            lease_ttl: Duration::from_secs(1),
            max_local_keys: super::DEFAULT_MAX_KEYS,
            backoff: (Duration::from_millis(50), Duration::from_secs(2)),
        }
    }

    /// Starts a builder for the Redis Cluster reachable at any of `nodes` (feature
    /// `redis-cluster`); finish it with
    /// [`build_cluster`](RedisStoreBuilder::build_cluster)`.await`. Each bucket is one key in
    /// its own hash tag, so every script runs on the one node owning that key's slot.
    #[cfg(feature = "redis-cluster")]
    pub fn cluster_builder<I, U>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        let mut builder = Self::builder(String::new());
        builder.cluster = Some(nodes.into_iter().map(Into::into).collect());
        builder
    }
}

/// Builder returned by [`RedisStore::builder`].
#[derive(Clone)]
#[must_use = "call .build() to get a RedisStore"]
pub struct RedisStoreBuilder {
    url: String,
    #[cfg(feature = "redis-cluster")]
    cluster: Option<Vec<String>>,
    prefix: String,
    call_timeout: Duration,
    failure: FailurePolicy,
    lease: u32,
    lease_ttl: Duration,
    max_local_keys: usize,
    backoff: (Duration, Duration),
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("call_timeout", &self.call_timeout)
            .field("failure", &self.failure)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The first part of every key name (default `"rl"`): layers with different limits on one
    /// Redis need different prefixes, instances sharing a limit the same one.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a request waits for Redis before the [`FailurePolicy`] decides (default
    /// [`DEFAULT_CALL_TIMEOUT`]). Must be > 0.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// What to decide while Redis cannot be asked (default [`FailurePolicy::Open`]).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Lease mode: take up to `tokens` tokens per call and spend the rest locally for at most
    /// `ttl`. `1` (the default) is exact mode. See the [module docs](self#exact-mode-and-lease-mode)
    /// for the over-admission bound. Must be > 0, and `ttl` > 0.
    pub fn lease(mut self, tokens: u32, ttl: Duration) -> Self {
        self.lease = tokens;
        self.lease_ttl = ttl;
        self
    }

    /// Bound on the keys the instance remembers (over-limit keys and leases; default
    /// [`DEFAULT_MAX_KEYS`](super::DEFAULT_MAX_KEYS)). A key that finds the table full is not
    /// remembered: it asks Redis again. Must be > 0.
    pub fn max_local_keys(mut self, n: usize) -> Self {
        self.max_local_keys = n;
        self
    }

    /// Back-off after a failed call: `min` after the first failure, doubling on each failed
    /// probe up to `max` (default 50 ms to 2 s). Must be `0 < min ≤ max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Checks the settings and creates the connection manager. It connects on the first call
    /// (a Redis that is down at start is handled like one that went down), and must be built
    /// inside a tokio runtime, whose tasks drive the connection.
    ///
    /// # Errors
    /// When the URL does not parse (`rate_limit.redis.url`), when there is no tokio runtime,
    /// or when a setting is zero or out of order; the error names the field.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        #[cfg(feature = "redis-cluster")]
        if self.cluster.is_some() {
            return Err(ConfigError::with_value_text(
                "rate_limit.redis.cluster",
                "connected with `build_cluster().await`",
                String::from("build()"),
            ));
        }
        self.check()?;
        let client = ::redis::Client::open(self.url.as_str()).map_err(|e| {
            // Not the URL itself: it may carry a password.
            ConfigError::with_value_text(
                "rate_limit.redis.url",
                "a redis:// or unix:// URL",
                format!("an URL it refused ({e})"),
            )
        })?;
        let (min, max) = self.backoff;
        // The manager's own timeouts only bound its reconnection attempts; each call is bounded
        // by `call_timeout` around it. Few retries: the store's back-off paces the attempts.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.call_timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_min_delay(min)
            .set_max_delay(max);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            ConfigError::with_value_text("rate_limit.redis", "a connection manager", e.to_string())
        })?;
        Ok(self.store(Conn::Single(conn)))
    }

    /// Connects to the cluster given to [`RedisStore::cluster_builder`] (this waits for the
    /// cluster's slot map) and builds the store.
    ///
    /// # Errors
    /// As [`build`](Self::build); also when no node answers (`rate_limit.redis.cluster`).
    #[cfg(feature = "redis-cluster")]
    pub async fn build_cluster(self) -> Result<RedisStore, ConfigError> {
        let Some(nodes) = self.cluster.clone() else {
            return Err(ConfigError::with_value_text(
                "rate_limit.redis.cluster",
                "node URLs from `RedisStore::cluster_builder`",
                String::from("none"),
            ));
        };
        self.check()?;
        let refused = |e: ::redis::RedisError| {
            ConfigError::with_value_text(
                "rate_limit.redis.cluster",
                "reachable cluster nodes",
                e.to_string(),
            )
        };
        let conn = ::redis::cluster::ClusterClient::new(nodes)
            .map_err(refused)?
            .get_async_connection()
            .await
            .map_err(refused)?;
        Ok(self.store(Conn::Cluster(conn)))
    }

    fn store(self, conn: Conn) -> RedisStore {
        RedisStore {
            inner: Arc::new(StoreConfig {
                conn,
                prefix: self.prefix,
                call_timeout: self.call_timeout,
                failure: self.failure,
                lease: self.lease,
                lease_ttl: self.lease_ttl,
                max_local_keys: self.max_local_keys,
                backoff: self.backoff,
            }),
        }
    }

    /// The settings' own checks.
    fn check(&self) -> Result<(), ConfigError> {
        if self.call_timeout.is_zero() {
            return Err(ConfigError::new(
                "rate_limit.redis.call_timeout",
                "> 0",
                self.call_timeout,
            ));
        }
        if self.lease == 0 {
            return Err(ConfigError::new(
                "rate_limit.redis.lease",
                "> 0",
                self.lease,
            ));
        }
        if self.lease_ttl.is_zero() {
            return Err(ConfigError::new(
                "rate_limit.redis.lease_ttl",
                "> 0",
                self.lease_ttl,
            ));
        }
        if self.max_local_keys == 0 {
            return Err(ConfigError::new(
                "rate_limit.redis.max_local_keys",
                "> 0",
                self.max_local_keys,
            ));
        }
        let (min, max) = self.backoff;
        if min.is_zero() || min > max {
            return Err(ConfigError::new(
                "rate_limit.redis.backoff",
                "0 < min ≤ max",
                self.backoff,
            ));
        }
        if let FailurePolicy::Local { instances: 0 } = self.failure {
            return Err(ConfigError::new(
                "rate_limit.redis.on_failure",
                "Local { instances > 0 }",
                self.failure,
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::with_value_text(
                "rate_limit.redis",
                "built inside a tokio runtime",
                String::from("no runtime"),
            ));
        }
        Ok(())
    }
}

/// Counters of a Redis-backed layer, from
/// [`RateLimitLayer::redis_stats`](super::RateLimitLayer::redis_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Calls made to Redis (scripts run, including failed ones).
    pub calls: u64,
    /// Calls that failed with an error (connection refused, reset, server error).
    pub errors: u64,
    /// Calls that took longer than the call timeout.
    pub timeouts: u64,
    /// Requests rejected from the over-limit cache, without a call.
    pub cached_rejections: u64,
    /// Requests admitted with a leased token, without a call.
    pub leased: u64,
    /// Requests admitted by [`FailurePolicy::Open`].
    pub failed_open: u64,
    /// Requests rejected by [`FailurePolicy::Closed`].
    pub failed_closed: u64,
    /// Requests decided by [`FailurePolicy::Local`]'s limiter.
    pub fell_back: u64,
    /// Times Redis was marked down.
    pub went_down: u64,
    /// Times Redis came back.
    pub recovered: u64,
    /// Leased tokens held by this instance now, not yet spent (lease mode).
    pub leased_held: u64,
    /// Whether Redis is marked down now.
    pub down: bool,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    cached_rejections: AtomicU64,
    leased: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    fell_back: AtomicU64,
    went_down: AtomicU64,
    recovered: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What [`Remote::check`] found without calling Redis.
pub(super) enum Local {
    /// Decided locally (over-limit cache, lease, or Redis down).
    Decided(Verdict),
    /// Ask Redis: run [`Remote::call`] with these.
    Call(Call),
}

/// A call to make: the gate it passed and the key's name in Redis.
pub(super) struct Call {
    gate: Gate,
    name: Vec<u8>,
}

/// The running side of a [`RedisStore`] inside a layer: its script, local table, health and
/// fallback.
pub(super) struct Remote {
    store: RedisStore,
    script: GcraScript,
    params: Params,
    max_delay: Duration,
    local: LocalTable,
    health: Health,
    /// [`FailurePolicy::Local`]'s limiter, on a timeline starting at `epoch`.
    fallback: Option<Limiter>,
    epoch: Instant,
    counters: Counters,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// The layer's GCRA parameters (ns), its burst and max keys.
    pub(super) fn new(
        store: RedisStore,
        interval: u64,
        burst: u32,
        max_delay: u64,
        max_keys: usize,
    ) -> Result<Self, ConfigError> {
        let c = &*store.inner;
        if c.lease > 1 && max_delay > 0 {
            return Err(ConfigError::new(
                "rate_limit.redis.lease",
                "1 in queue mode (leases are for the rejecting mode)",
                c.lease,
            ));
        }
        let fallback = match c.failure {
            FailurePolicy::Local { instances } => Some(Limiter::new(
                Gcra::new(
                    interval.saturating_mul(u64::from(instances)),
                    burst.div_ceil(instances.max(1)),
                    max_delay,
                ),
                max_keys,
            )),
            _ => None,
        };
        tracing::info!(
            prefix = %c.prefix,
            failure_policy = ?c.failure,
            call_timeout = ?c.call_timeout,
            lease = c.lease,
            "rate limit: state in Redis"
        );
        Ok(Remote {
            params: Params::from_nanos(interval, burst, max_delay),
            max_delay: Duration::from_nanos(max_delay),
            local: LocalTable::new(c.max_local_keys),
            health: Health::new(c.backoff.0, c.backoff.1),
            fallback,
            epoch: Instant::now(),
            counters: Counters::default(),
            script: GcraScript::new(),
            store,
        })
    }

    /// The key's name in Redis: `{prefix:kind:key}`.
    fn name(&self, key: &KeyValue<'_>) -> Vec<u8> {
        let prefix = &self.store.inner.prefix;
        let mut name = Vec::with_capacity(prefix.len() + 48);
        name.push(b'{');
        name.extend_from_slice(prefix.as_bytes());
        match key {
            KeyValue::Global => name.extend_from_slice(b":g"),
            KeyValue::Unknown => name.extend_from_slice(b":u"),
            KeyValue::Ip(ip) => {
                name.extend_from_slice(b":i:");
                name.extend_from_slice(ip.to_string().as_bytes());
            }
            KeyValue::Bytes(bytes) => {
                name.extend_from_slice(b":b:");
                name.extend_from_slice(bytes);
            }
        }
        name.push(b'}');
        name
    }

    /// What can be decided for `key` without Redis: a remembered rejection, a leased token,
    /// or Redis being down.
    pub(super) fn check(&self, key: &KeyValue<'_>) -> Local {
        let now = Instant::now();
        let name = self.name(key);
        match self.local.lookup(&name, now) {
            Hint::Over { retry_after, reset } => {
                bump(&self.counters.cached_rejections);
                return Local::Decided(Verdict::Reject {
                    retry_after: nanos(retry_after),
                    reset: nanos(reset),
                });
            }
            Hint::Leased => {
                bump(&self.counters.leased);
                return Local::Decided(Verdict::ALLOW_UNKNOWN);
            }
            Hint::Ask => {}
        }
        match self.health.gate(now) {
            Gate::Skip { retry_in } => Local::Decided(self.on_failure(key, now, retry_in)),
            gate => Local::Call(Call { gate, name }),
        }
    }

    /// Asks Redis; on failure or timeout, the failure policy decides.
    pub(super) async fn call(&self, call: Call, key: &KeyValue<'_>) -> Verdict {
        let c = &*self.store.inner;
        bump(&self.counters.calls);
        let sent = Instant::now();
        let run = async {
            match c.conn.clone() {
                Conn::Single(mut conn) => {
                    self.script
                        .run(&mut conn, &call.name, self.params, c.lease)
                        .await
                }
                #[cfg(feature = "redis-cluster")]
                Conn::Cluster(mut conn) => {
                    self.script
                        .run(&mut conn, &call.name, self.params, c.lease)
                        .await
                }
            }
        };
        let result = tokio::time::timeout(c.call_timeout, run).await;
        let now = Instant::now();
        let error = match result {
            Ok(Ok(answer)) => {
                if self.health.succeeded(call.gate) == Transition::Recovered {
                    bump(&self.counters.recovered);
                    tracing::info!(prefix = %c.prefix, "rate limit: Redis answers again");
                }
                self.remember(&call.name, sent, answer.verdict, answer.granted);
                return answer.verdict;
            }
            Ok(Err(e)) => {
                bump(&self.counters.errors);
                Cow::Owned(e.to_string())
            }
            Err(_) => {
                bump(&self.counters.timeouts);
                Cow::Borrowed("call timed out")
            }
        };
        match self.health.failed(call.gate, now) {
            Transition::WentDown => {
                bump(&self.counters.went_down);
                tracing::warn!(
                    prefix = %c.prefix,
                    error = %error,
                    failure_policy = ?c.failure,
                    "rate limit: Redis failed; applying the failure policy and backing off"
                );
            }
            Transition::StillDown => {
                tracing::debug!(prefix = %c.prefix, error = %error, "rate limit: Redis still down");
            }
            Transition::None | Transition::Recovered => {}
        }
        self.on_failure(key, now, c.backoff.0)
    }

    /// Remembers what Redis said, counted from `sent` (before the server's clock read it, so a
    /// remembered rejection ends no later than Redis' own).
    fn remember(&self, name: &[u8], sent: Instant, verdict: Verdict, granted: u32) {
        match verdict {
            Verdict::Reject { retry_after, reset } => {
                let retry_after = Duration::from_nanos(retry_after);
                // In queue mode a request is accepted (delayed) `max_delay` before then.
                let until = sent + retry_after.saturating_sub(self.max_delay);
                let now = Instant::now();
                if until > now {
                    let reset_at = sent + Duration::from_nanos(reset);
                    self.local
                        .over(name, now, until, sent + retry_after, reset_at);
                }
            }
            Verdict::Allow { .. } if granted > 1 => {
                let c = &*self.store.inner;
                // Never more than `lease − 1` held per key: the documented bound.
                self.local
                    .lease(name, granted - 1, c.lease - 1, sent + c.lease_ttl, sent);
            }
            Verdict::Allow { .. } | Verdict::Delay { .. } => {}
        }
    }

    /// The failure policy's verdict for `key` at `now`; `retry_in` until Redis is asked again.
    fn on_failure(&self, key: &KeyValue<'_>, now: Instant, retry_in: Duration) -> Verdict {
        match self.store.inner.failure {
            FailurePolicy::Open => {
                bump(&self.counters.failed_open);
                Verdict::ALLOW_UNKNOWN
            }
            FailurePolicy::Closed => {
                bump(&self.counters.failed_closed);
                let retry = nanos(retry_in.max(self.store.inner.backoff.0));
                Verdict::Reject {
                    retry_after: retry,
                    reset: retry,
                }
            }
            FailurePolicy::Local { .. } => {
                bump(&self.counters.fell_back);
                match &self.fallback {
                    Some(limiter) => {
                        limiter.step(key, nanos(now.saturating_duration_since(self.epoch)))
                    }
                    None => Verdict::ALLOW_UNKNOWN,
                }
            }
        }
    }

    pub(super) fn stats(&self) -> RedisStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            calls: load(&c.calls),
            errors: load(&c.errors),
            timeouts: load(&c.timeouts),
            cached_rejections: load(&c.cached_rejections),
            leased: load(&c.leased),
            failed_open: load(&c.failed_open),
            failed_closed: load(&c.failed_closed),
            fell_back: load(&c.fell_back),
            went_down: load(&c.went_down),
            recovered: load(&c.recovered),
            leased_held: self.local.leased_tokens(),
            down: self.health.is_down(),
        }
    }
}
