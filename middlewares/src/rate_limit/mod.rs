//! Request rate limiting with a token bucket (GCRA): reject with `429`, or queue.
//!
//! [`RateLimitLayer::builder(limit, period)`](RateLimitLayer::builder) builds a bucket of
//! capacity `limit` (change it with [`burst`](RateLimitBuilder::burst)) refilled at `limit`
//! tokens per `period`; each request takes one token. The limiter state lives in an `Arc` owned by
//! the layer, so every clone of the service shares it (no `Buffer` needed, unlike tower's
//! `RateLimit`, whose per-clone state silently multiplies the limit in axum).
//!
//! # Modes
//! - **Rejecting** (default): a request that finds its bucket empty is answered at once with
//!   `429 Too Many Requests` (see [Headers](#headers)); the inner service never sees it.
//! - **Queue** ([`queue(max_delay)`](RateLimitBuilder::queue) and/or
//!   [`max_queue(n)`](RateLimitBuilder::max_queue)): like nginx `limit_req burst=… delay=…`
//!   (see [the mapping](#nginx-limit_req)), a
//!   request that finds its bucket empty reserves the next free slot and is held until then,
//!   inside the response future (a tokio sleep; `poll_ready` never waits). Requests whose slot
//!   is more than `max_delay` away, or that would be the `n+1`-th waiting on their key, get the
//!   `429`. A slot stays reserved if its client goes away while waiting (as in nginx). The
//!   inner service is called when the wait ends, so timeouts inside this layer start then.
//!   This is why [`RateLimit<S>`] needs `S: Clone` (in every mode, as the bound is static; the
//!   clone is only made for a queued request): the service made ready for the request moves
//!   into the waiting future and a clone takes its place.
//! - **Dry run** ([`dry_run(true)`](RateLimitBuilder::dry_run)): counts (see
//!   [`RateLimitLayer::stats`]) and logs at warn level what would be delayed or rejected, and
//!   serves everything at once.
//!
//! ## nginx `limit_req`
//! nginx's `burst=` counts the requests beyond the first that may be in excess, and `delay=`
//! how many of those pass without waiting, so the mapping (checked against nginx 1.22) is:
//!
//! | nginx | here |
//! |---|---|
//! | `rate=Rr/s burst=B delay=D` | `builder(R, 1 s).burst(D + 1).max_queue(B − D)`, or `.queue((B − D) / R s)` instead of `max_queue` |
//! | `rate=Rr/s burst=B` (no `delay=`: D = 0) | `builder(R, 1 s).burst(1).max_queue(B)` |
//! | `rate=Rr/s burst=B nodelay` | `builder(R, 1 s).burst(B + 1)`, rejecting mode |
//! | `rate=Rr/s` (no `burst=`) | `builder(R, 1 s).burst(1)` |
//!
//! So `max_queue(n)` alone is nginx's `burst=n` only with `burst(1)`: the default burst here is
//! the `limit`, which nginx would write as `delay=limit − 1`. nginx answers `503` by default
//! (`limit_req_status`); this layer answers `429`.
//!
//! # Keys
//! One global bucket by default. [`Key::ClientIp`] keys by client network (from axum's
//! `ConnectInfo<SocketAddr>`, else a `SocketAddr` or `IpAddr` in the request extensions; from
//! `X-Forwarded-For` only with [`trusted_hops(n)`](RateLimitBuilder::trusted_hops), taking the
//! `n`-th entry from the right, which is safe only behind proxies that append to it); an IPv6
//! client is keyed by its /64 ([`ipv6_prefix`](RateLimitBuilder::ipv6_prefix)), an IPv4 client
//! by its address ([`ipv4_prefix`](RateLimitBuilder::ipv4_prefix)). [`Key::Header`] keys by a
//! header's value, [`Key::Custom`] by a closure over [`RequestInfo`], whose `None` exempts the
//! request. A request whose IP or header cannot be found counts in one shared "unknown" bucket.
//!
//! ## Bounded key memory
//! Per-key memory is bounded by [`max_keys`](RateLimitBuilder::max_keys) (default 100 000,
//! split over 16 shards by hash, each with its own lock and its own recency list). The table
//! never grows past the bound, and a key takes about a hundred bytes at most (byte keys longer
//! than 64 bytes are stored as a 128-bit digest). A key missing from the table is a full
//! bucket, so a key whose bucket is full again (idle) can go without losing anything.
//!
//! When a new key arrives at a full shard, it takes the place of the least recently used idle
//! key among the shard's 8 least recently used, else of the least recently used key even if
//! that key is still in debt (counted in [`RateLimitStats::evicted_busy`]). Every request,
//! rejected ones too, counts as use. There is no background sweep and no gap between sweeps: an
//! idle key is replaceable the moment its bucket is full again.
//! [`RateLimitLayer::evict_idle`] drops every idle key at once, to give their memory back;
//! nothing needs it to enforce the limit.
//!
//! Evicting a key in debt forgets the debt: that key's next request starts from a full bucket.
//! The alternative, counting new keys of a full table in one shared overflow bucket, keeps every
//! debt, and is what this layer did before. Compare what a client that can rotate keys gains:
//! - *Shared overflow bucket*: a client rotating through more keys than the table holds fills
//!   it with keys in debt, then drains the overflow bucket, and from then on **no first-time
//!   client is admitted** until the held keys go idle (a whole refill; at 1 per minute, 2 000
//!   rotated keys in one second leave 0 of the next 100 new clients admitted). Key rotation
//!   becomes a denial of service against everyone new.
//! - *Least recently used out* (this layer): the rotating client gets one bucket per key it
//!   presents, as it would from an unbounded table, plus a fresh burst for a key it comes back
//!   to after cycling through more keys than the table holds: with more than `max_keys` keys
//!   in rotation it is, in effect, not limited per key. It can also push other busy keys out,
//!   which forgives *their* debts (a gift to them, not harm to them). Every first-time client
//!   is still admitted (all 100 in the scenario above), and a client that keeps sending on one
//!   key stays in the table and stays limited.
//!
//! A per-key limit never stopped a client that mints keys freely: each new key is a fresh
//! bucket in an unbounded table too. What stops it is making keys costly to mint (the /64
//! default for IPv6, a shorter [`ipv6_prefix`](RateLimitBuilder::ipv6_prefix), keys from
//! authenticated identities) and a global limit stacked outside the keyed one. Given that,
//! the trade that bounds memory must not turn rotation into a lockout of new clients: a
//! rotating client gaining about what it would gain from unlimited memory is the better failure
//! than every new client being refused.
//!
//! # Headers
//! `429` answers carry `Retry-After` (whole seconds until a request would be admitted without
//! delay, rounded up, at least 1) and the structured fields of
//! draft-ietf-httpapi-ratelimit-headers-10 (one policy named `"default"`; `t` is read as "until
//! the whole quota is back", which for a token bucket is when the bucket is full again):
//!
//! ```text
//! RateLimit-Policy: "default";q=<limit>;w=<period in seconds, rounded up>
//! RateLimit: "default";r=<remaining>;t=<seconds until the bucket is full again>
//! ```
//!
//! With [`expose_headers(true)`](RateLimitBuilder::expose_headers) admitted responses carry
//! both too; by default they do not, which keeps the common path free of header formatting.
//!
//! # Clock
//! Reading the time is most of what a global-key limiter costs per request, so the limiter
//! reads the CPU's time-stamp counter (through `quanta`), a cheaper read than
//! `tokio::time::Instant::now()` (figures: the crate's `README.md`, *Figures behind the docs*).
//! The counter does not
//! follow tokio's paused test clock, so a layer built while tokio's clock is paused (in a
//! `#[tokio::test(start_paused = true)]`) reads tokio's clock instead, and its tests can
//! `tokio::time::advance` through refills. [`RateLimitBuilder::clock`] chooses explicitly
//! (see [`TimeSource`](crate::TimeSource)); [`RateLimitLayer::clock`] tells which one a layer
//! reads. A layer built *before* a test pauses the clock reads the counter: build it after, or
//! choose [`TimeSource::Tokio`](crate::TimeSource::Tokio).
//!
//! # Hosts and ordering
//! The tower host runs layers in stack order: a rate limit outside a timeout rejects before the
//! deadline starts, one inside it counts only requests that reached it. The Pingora host runs
//! admission in `request_filter`, before peer selection and the upstream exchange, whatever the
//! stack order. It calls the same two methods as the tower service:
//! [`RateLimitLayer::key_for`] (or [`key_for_peer`](RateLimitLayer::key_for_peer)), then
//! [`RateLimitLayer::check_now`], and renders a [`Decision::Reject`] with
//! [`RateLimited`]'s [`Rejection`](crate::Rejection) rendering, so both hosts answer alike.
//!
//! # Many instances, one limit
//! Each layer counts in its own process. With the `redis` feature,
//! [`RateLimitBuilder::redis`] keeps the buckets in Redis instead, with every setting above
//! unchanged, so instances behind a load balancer share one limit: see [`redis`].
//!
//! # Implementation: hand-written GCRA rather than `governor`
//! Each bucket is one `u64` "theoretical arrival time" (TAT): an atomic updated with one
//! compare-exchange for the global and unknown buckets, a plain value under a shard lock for
//! keyed buckets (16 shards of a `hashbrown::HashTable` of indices into a node vector that also
//! threads the recency list; one foldhash per lookup picks both the shard and the slot; a hit
//! moves its node to the front of the list with a few index writes, no allocation). Times are
//! `u64` nanoseconds; a setting whose burst would span more than about 146 years is refused at
//! [`build`](RateLimitBuilder::build) rather than left to saturate (which would admit
//! everything). `governor` was evaluated and not used because:
//! - its `check` reads its own clock; the host-agnostic [`check`](RateLimitLayer::check) can
//!   take `now` from the caller, and the limiter follows a paused tokio clock in tests;
//! - it cannot reserve a future slot, which queue mode needs (`until_ready` polls and retries,
//!   with no FIFO order and no bound on the wait);
//! - its keyed store has no bound on keys (only `retain_recent`).
//!
//! Against it (figures: the crate's `README.md`, *Figures behind the docs*), `governor` is a
//! little faster for one global key, slower per key, and cannot do the queue or the bounded
//! table: the hand-written core stays. `tower_governor` is slower than this layer.
//!
//! # Example
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use middlewares::rate_limit::{Key, RateLimitLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = RateLimitLayer::builder(2, Duration::from_secs(1))
//!     .key(Key::ClientIp)
//!     .build()
//!     .expect("valid rate limit");
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//! let request = || {
//!     let mut req = Request::new(String::new());
//!     req.extensions_mut().insert(std::net::SocketAddr::from(([192, 0, 2, 1], 4711)));
//!     req
//! };
//! for _ in 0..2 {
//!     let res = svc.ready().await.unwrap().call(request()).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//! }
//! let res = svc.ready().await.unwrap().call(request()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "1");
//! # }
//! ```

mod error;
pub mod future;
mod gcra;
mod key;
mod layer;
mod limiter;
#[cfg(feature = "pingora")]
mod proxy;
#[cfg(feature = "redis")]
pub mod redis;

use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::sleep;
use tower_service::Service;

pub use self::error::{ConfigError, RateLimited, RATELIMIT, RATELIMIT_POLICY};
pub use self::key::{Key, KeyFn, KeyValue};
pub use self::layer::{Decision, Quota, RateLimitBuilder, RateLimitLayer, DEFAULT_MAX_KEYS};
pub use self::limiter::RateLimitStats;
#[cfg(feature = "pingora")]
pub use self::proxy::RateLimitProxyCtx;

use self::future::ResponseFuture;
use crate::{request_time, Layered, RequestInfo};

/// Service built by [`RateLimitLayer`]: admits, delays or rejects each request in `call`.
///
/// `poll_ready` only forwards the inner readiness. Clones share the layer's limiter. The inner
/// service must be `Clone` for queue mode (see the [module docs](self#modes)).
pub type RateLimit<S> = Layered<RateLimitLayer, S>;

impl<S> RateLimit<S> {
    /// Wraps `inner`, counting against `layer`'s limiter.
    pub const fn new(inner: S, layer: RateLimitLayer) -> Self {
        Layered::wrap(layer, inner)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        #[cfg(feature = "redis")]
        if self.policy.has_remote() {
            return self.call_remote(req);
        }
        if !self.policy.is_global() {
            return self.call_keyed(req);
        }
        // Fast path, one global bucket: no `RequestInfo`, no key lookup, and for an admitted
        // request no `Decision`.
        if let Some(now) = self.policy.counter_nanos() {
            return self.call_global(req, now);
        }
        // On tokio's clock: the one read of this layer, shared with the layers around and
        // inside this one (see `request_time`); `time` lives until the inner service was called.
        let time = request_time::read();
        let now = self.policy.nanos(time.now());
        self.call_global(req, now)
    }
}

impl<S> RateLimit<S> {
    /// `call` for the global key, counted at `now` on the limiter's timeline.
    #[inline(always)]
    fn call_global<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        now: u64,
    ) -> ResponseFuture<S::Future, S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    {
        match self.policy.check_global(now) {
            None => ResponseFuture::called(self.inner.call(req), None),
            Some(decision) => self.decided(req, decision),
        }
    }

    /// `call` with a key per request. Out of line: a request borrowed (for its key) in the same
    /// function as the global fast path was copied (over 200 bytes) before being handed to the
    /// inner service, on the fast path too.
    #[inline(never)]
    fn call_keyed<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    {
        let Some(key) = self.policy.key_for(&RequestInfo::from_request(&req)) else {
            // A custom key function exempted this request.
            return ResponseFuture::called(self.inner.call(req), None);
        };
        if let Some(now) = self.policy.counter_nanos() {
            let decision = self.policy.check_nanos(&key, now);
            return self.decided(req, decision);
        }
        let time = request_time::read();
        let decision = self.policy.check(&key, time.now());
        self.decided(req, decision)
    }

    /// `call` with the state in Redis: decided at once when the instance knows enough, else the
    /// response future waits for Redis' answer (then carries it out as `decided` would).
    #[cfg(feature = "redis")]
    #[inline(never)]
    fn call_remote<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    {
        let checked = match self.policy.key_for(&RequestInfo::from_request(&req)) {
            Some(key) => self.policy.check_remote(&key),
            // A custom key function exempted this request.
            None => return ResponseFuture::called(self.inner.call(req), None),
        };
        match checked {
            layer::Checked::Now(decision) => self.decided(req, decision),
            layer::Checked::Later(decision) => {
                // As for a queued request: the service made ready goes into the future.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::deciding(decision, self.policy.clone(), ready, req)
            }
        }
    }

    /// Carries out `decision` for `req`.
    #[inline]
    fn decided<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        decision: Decision,
    ) -> ResponseFuture<S::Future, S, ReqBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    {
        let headers = |quota| {
            self.policy
                .exposes_headers()
                .then(|| self.policy.quota_headers(&quota))
        };
        match decision {
            Decision::Allow(quota) => {
                let headers = headers(quota);
                ResponseFuture::called(self.inner.call(req), headers)
            }
            Decision::Delay { delay, quota } => {
                let headers = headers(quota);
                // Move the service made ready for this request into the future; a clone takes
                // its place and will be polled ready before the next call.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(sleep(delay), ready, req, headers)
            }
            Decision::Reject(err) => ResponseFuture::rejected(err),
        }
    }
}
