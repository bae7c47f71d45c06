//! Wall time of each layer and of the four-layer stack over bare, measured in pairs:
//! `cargo bench -p pingora-tower-benches --bench paired [-- GROUP]`.
//!
//! criterion (`layers`) times `bare` for a few seconds, then each variant for a few seconds; on a
//! shared virtual machine the speed drifts in between, and one run's `variant - bare` moves by
//! tens of ns (±150 ns on the stack's yield-once path). Here every round times one batch of each
//! variant of a group back to back (`bare` among them, in an order that rotates every round),
//! takes `variant - bare` of that round, and reports the median and quartiles of those
//! differences over all rounds: drift slower than a round (a few milliseconds) cancels out. The
//! groups and variants are those of `layers`, without its two non-comparable rate limiters, plus
//! `obs` (the observability layer, with and without metrics). See
//! `README.md` beside this file.

use std::convert::Infallible;
use std::fmt::Debug;
use std::num::NonZeroU32;

use http::{Request, Response};
use middlewares::obs::{Metrics, ObsLayer};
use middlewares::retry::ReplayBody;
use middlewares::TimeSource;
use pingora_tower_benches::configs::{
    our_rate_limit, our_rate_limit_on, our_stack, tower_governor_layer, tower_resilience_breaker,
    tower_stack, BudgetedNeverRetry, NeverRetry, DEADLINE,
};
use pingora_tower_benches::{calls, inner, GovernorLayer, HUGE_RATE};
use tokio::runtime::Runtime;
use tower::retry::RetryLayer as TowerRetryLayer;
use tower::timeout::TimeoutLayer as TowerTimeoutLayer;
use tower::{Layer, Service};

/// Calls per timed batch.
const BATCH: u64 = 500;
/// Timed rounds per group and inner shape (`PAIRED_ROUNDS` overrides).
const ROUNDS: usize = 2_000;
/// Untimed rounds first, so every service and the allocator are warm.
const WARM_UP_ROUNDS: usize = 100;

/// One variant of a group: times one batch of calls and returns the ns per call.
type Batch<'a> = Box<dyn FnMut() -> f64 + 'a>;

/// Settings of one run.
struct Run<'a> {
    rt: &'a Runtime,
    rounds: usize,
    /// Only groups whose name contains this.
    filter: Option<String>,
}

/// Runs every group on one inner service shape (a macro token: the inner service's request
/// type differs between groups).
macro_rules! for_each_inner {
    ($shape:ident, $run:expr) => {{
        let name = stringify!($shape);
        timeout($run, name, inner!($shape, String, String));
        rate_limit($run, name, inner!($shape, String, axum::body::Body));
        retry(
            $run,
            name,
            inner!($shape, String, String),
            inner!($shape, ReplayBody<String>, String),
        );
        circuit_breaker($run, name, inner!($shape, String, String));
        obs($run, name, inner!($shape, String, String));
        stack(
            $run,
            name,
            inner!($shape, String, String),
            inner!($shape, ReplayBody<String>, String),
        );
        acl($run, name, inner!($shape, String, String));
    }};
}

fn main() {
    // `cargo bench` passes `--bench`; a group filter may follow.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    let rounds = std::env::var("PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    // tower's `RateLimit` makes its timer when built: inside the runtime.
    let _runtime = rt.enter();
    let run = Run {
        rt: &rt,
        rounds,
        filter,
    };
    println!(
        "ns per call over bare: median [quartiles] of {rounds} paired rounds of {BATCH} calls"
    );
    for_each_inner!(immediate, &run);
    for_each_inner!(yield_once, &run);
    // Needs a `redis-server` (the group starts its own): only when asked for by name.
    #[cfg(feature = "redis")]
    if run.filter.as_ref().is_some_and(|f| f.contains("redis")) {
        redis_group::run(&run);
    }
}

/// A [`Batch`] calling `svc` with `Request::new(B::default())`.
fn batch<'a, S, B, R>(rt: &'a Runtime, mut svc: S) -> Batch<'a>
where
    S: Service<Request<B>, Response = Response<R>> + 'a,
    S::Error: Debug,
    B: Default,
{
    Box::new(move || rt.block_on(calls(&mut svc, BATCH)).as_nanos() as f64 / BATCH as f64)
}

/// Inner services answering `Response<String>` to `Request<String>`.
type Plain = Request<String>;

fn timeout<S>(run: &Run<'_>, inner: &str, make: impl Fn() -> S)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible>,
{
    let rt = run.rt;
    run.group(
        "timeout",
        inner,
        vec![
            ("bare", batch(rt, make())),
            ("ours", batch(rt, middlewares::timeout(5_000).layer(make()))),
            (
                "tower",
                batch(rt, TowerTimeoutLayer::new(DEADLINE).layer(make())),
            ),
        ],
    );
}

fn rate_limit<S>(run: &Run<'_>, inner: &str, make: impl Fn() -> S)
where
    S: Service<Plain, Response = Response<axum::body::Body>, Error = Infallible> + Clone,
{
    let rt = run.rt;
    let rate = NonZeroU32::new(HUGE_RATE).expect("non-zero");
    run.group(
        "rate_limit",
        inner,
        vec![
            ("bare", batch(rt, make())),
            ("ours", batch(rt, our_rate_limit().layer(make()))),
            (
                "ours_tokio_clock",
                batch(rt, our_rate_limit_on(TimeSource::Tokio).layer(make())),
            ),
            (
                "governor",
                batch(rt, GovernorLayer::per_second(rate).layer(make())),
            ),
            (
                "governor_std_clock",
                batch(rt, GovernorLayer::per_second_std_clock(rate).layer(make())),
            ),
            (
                "tower_governor",
                batch(rt, tower_governor_layer().layer(make())),
            ),
        ],
    );
}

fn retry<S, SR>(run: &Run<'_>, inner: &str, make: impl Fn() -> S, make_replay: impl Fn() -> SR)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible> + Clone,
    SR: Service<Request<ReplayBody<String>>, Response = Response<String>, Error = Infallible>
        + Clone,
{
    let rt = run.rt;
    let never = |clone_request| TowerRetryLayer::new(NeverRetry { clone_request });
    run.group(
        "retry",
        inner,
        vec![
            ("bare", batch(rt, make())),
            (
                "ours",
                batch(rt, middlewares::retry(2).layer(make_replay())),
            ),
            ("tower_no_clone", batch(rt, never(false).layer(make()))),
            ("tower_clone", batch(rt, never(true).layer(make()))),
            (
                "tower_clone_budget",
                batch(
                    rt,
                    TowerRetryLayer::new(BudgetedNeverRetry::default()).layer(make()),
                ),
            ),
        ],
    );
}

fn circuit_breaker<S>(run: &Run<'_>, inner: &str, make: impl Fn() -> S)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let rt = run.rt;
    run.group(
        "circuit_breaker",
        inner,
        vec![
            ("bare", batch(rt, make())),
            (
                "ours",
                batch(rt, middlewares::circuit_breaker(50, 10_000).layer(make())),
            ),
            (
                "tower_resilience",
                batch(rt, tower_resilience_breaker().layer(make())),
            ),
        ],
    );
}

/// The `obs` layer with no subscriber: span, trace context and request id alone, then with
/// Prometheus metrics (the defaults: a request without `traceparent` or `x-request-id` gets
/// neither); `ours_made_ids` makes it a request id, written into its empty header map.
fn obs<S>(run: &Run<'_>, inner: &str, make: impl Fn() -> S)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible>,
{
    let rt = run.rt;
    run.group(
        "obs",
        inner,
        vec![
            ("bare", batch(rt, make())),
            ("ours_no_metrics", batch(rt, ObsLayer::new().layer(make()))),
            (
                "ours",
                batch(rt, ObsLayer::new().metrics(Metrics::new()).layer(make())),
            ),
            (
                "ours_made_ids",
                batch(
                    rt,
                    ObsLayer::new()
                        .metrics(Metrics::new())
                        .generate_request_ids(true)
                        .layer(make()),
                ),
            ),
        ],
    );
}

fn stack<S, SR>(run: &Run<'_>, inner: &str, make: impl Fn() -> S, make_replay: impl Fn() -> SR)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible> + Clone,
    SR: Service<Request<ReplayBody<String>>, Response = Response<String>, Error = Infallible>
        + Clone,
{
    let rt = run.rt;
    run.group(
        "stack",
        inner,
        vec![
            ("bare", batch(rt, make())),
            ("ours", batch(rt, our_stack().service(make_replay()))),
            (
                "tower_no_clone",
                batch(rt, tower_stack(false).service(make())),
            ),
            ("tower_clone", batch(rt, tower_stack(true).service(make()))),
        ],
    );
}

/// Puts a client address into each request, as a server does (`bare` gets it too).
fn with_peer(mut req: Plain) -> Plain {
    req.extensions_mut()
        .insert(std::net::SocketAddr::from(([192, 0, 2, 1], 4711)));
    req
}

fn acl<S>(run: &Run<'_>, inner: &str, make: impl Fn() -> S)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible>,
{
    use middlewares::acl::{AclLayer, Rule};
    use tower::util::MapRequestLayer;
    let rt = run.rt;
    let peer = || MapRequestLayer::new(with_peer as fn(Plain) -> Plain);
    // Three networks, none of them the client's: every rule is read, the default allows.
    let ips = AclLayer::builder()
        .deny_ip("10.0.0.0/8")
        .deny_ip("2001:db8::/32")
        .deny_ip("198.51.100.0/24")
        .build()
        .expect("valid acl");
    // A path prefix and a method: the path is canonicalised (already canonical: one scan).
    let paths = AclLayer::builder()
        .rule(Rule::deny().path_prefix("/admin"))
        .rule(Rule::deny().method(http::Method::DELETE))
        .build()
        .expect("valid acl");
    run.group(
        "acl",
        inner,
        vec![
            ("bare", batch(rt, peer().layer(make()))),
            ("ours_ip", batch(rt, peer().layer(ips.layer(make())))),
            ("ours_path", batch(rt, peer().layer(paths.layer(make())))),
        ],
    );
}

impl Run<'_> {
    /// Times `variants` (`bare` first) in paired rounds and prints each one's overhead.
    fn group(&self, group: &str, inner: &str, mut variants: Vec<(&str, Batch<'_>)>) {
        if self.filter.as_ref().is_some_and(|f| !group.contains(f)) {
            return;
        }
        let n = variants.len();
        // Per variant, the per-call time of each round's batch.
        let mut times = vec![Vec::with_capacity(self.rounds); n];
        for round in 0..WARM_UP_ROUNDS + self.rounds {
            // Rotate the order, so no variant always runs right after another.
            for step in 0..n {
                let variant = (round + step) % n;
                let took = (variants[variant].1)();
                if round >= WARM_UP_ROUNDS {
                    times[variant].push(took);
                }
            }
        }
        let (bare, others) = times.split_first().expect("bare is measured");
        let [_, bare_median, _] = quartiles(bare.clone());
        println!("{group}/bare/{inner}: {bare_median:.1} ns per call");
        for ((name, _), times) in variants[1..].iter().zip(others) {
            let over = times.iter().zip(bare).map(|(t, b)| t - b).collect();
            let [q1, median, q3] = quartiles(over);
            println!("{group}/{name}/{inner}: {median:+.1} [{q1:+.1}, {q3:+.1}]");
        }
    }
}

/// The first quartile, the median and the third quartile of `values`.
fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

/// The tests' `redis-server` starter, shared as a file (the benches do not depend on the tests).
#[cfg(feature = "redis")]
#[allow(unreachable_pub, dead_code)]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

/// `redis_rate_limit`: the rate limit with its state in a local `redis-server` against the
/// in-process one (`cargo bench -p pingora-tower-benches --features redis --bench paired --
/// redis`). Besides the paired wall time per call, one long run per variant gives the CPU time
/// per request of the bench thread (the connection's task runs on it too) and of
/// `redis-server`, and Redis script runs per request.
#[cfg(feature = "redis")]
// The bench times real round trips: wall-clock `std::time::Instant` is the point.
#[allow(clippy::disallowed_types)]
mod redis_group {
    use std::convert::Infallible;
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use http::{Request, Response};
    use middlewares::rate_limit::redis::RedisStore;
    use middlewares::rate_limit::RateLimitLayer;
    use pingora_tower_benches::configs::our_rate_limit;
    use pingora_tower_benches::HUGE_RATE;
    use tokio::runtime::Runtime;
    use tower::{Layer, Service, ServiceExt};

    use super::{Batch, Run, BATCH};

    use super::redis_server::RedisServer;

    /// Paired rounds: each exact-mode call is a round trip, so fewer than the other groups.
    const ROUNDS: usize = 100;

    type Body = axum::body::Body;

    fn inner(
    ) -> impl Service<Request<String>, Response = Response<Body>, Error = Infallible> + Clone {
        tower::service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(Body::default()))
        })
    }

    /// A layer over the bench's Redis: a huge global limit (every call admitted), or a limit
    /// of 1 per hour, spent at once (every call rejected, from the over-limit cache but the
    /// first).
    fn redis_layer(redis: &RedisServer, prefix: &str, limit: u32, lease: u32) -> RateLimitLayer {
        let store = RedisStore::builder(redis.url())
            .prefix(prefix)
            .call_timeout(Duration::from_millis(100))
            .lease(lease, Duration::from_secs(1))
            .build()
            .expect("store");
        let period = Duration::from_secs(if limit == 1 { 3_600 } else { 1 });
        RateLimitLayer::builder(limit, period)
            .redis(store)
            .build()
            .expect("layer")
    }

    /// The CPU time the calling thread has run, in ns (`/proc/thread-self/schedstat`).
    fn thread_cpu_ns() -> u64 {
        schedstat_ns("/proc/thread-self/schedstat")
    }

    /// The first field of a `schedstat` file: ns on a CPU.
    fn schedstat_ns(path: &str) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Calls `svc` `n` times, admitted or not.
    async fn calls<S>(svc: &mut S, n: u64)
    where
        S: Service<Request<String>, Response = Response<Body>, Error = Infallible>,
    {
        for _ in 0..n {
            let Ok(ready) = svc.ready().await;
            let Ok(res) = ready.call(Request::new(String::new())).await;
            black_box(res.status());
        }
    }

    /// A batch of `svc`.
    fn batch<'a, S>(rt: &'a Runtime, mut svc: S) -> Batch<'a>
    where
        S: Service<Request<String>, Response = Response<Body>, Error = Infallible> + 'a,
    {
        Box::new(move || {
            let start = Instant::now();
            rt.block_on(calls(&mut svc, BATCH));
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
    }

    pub(super) fn run(run: &Run<'_>) {
        let redis = RedisServer::start();
        // Its own runtime: the connection needs tokio's I/O driver, which the other groups
        // leave out; the stores are built inside it, so their tasks run there.
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            panic!("tokio runtime");
        };
        let _entered = runtime.enter();
        let rt = &runtime;
        let exact = redis_layer(&redis, "exact", HUGE_RATE, 1);
        let lease = redis_layer(&redis, "lease", HUGE_RATE, 100);
        let over = redis_layer(&redis, "over", 1, 1);
        let layers = [
            ("bare", None),
            ("in_process", Some(our_rate_limit())),
            ("redis_exact", Some(exact.clone())),
            ("redis_lease_100", Some(lease.clone())),
            ("redis_over_limit", Some(over.clone())),
        ];
        // Spend the over-limit layer's one token, and learn that it is spent.
        rt.block_on(calls(&mut over.layer(inner()), 2));
        let variants = layers
            .iter()
            .map(|(name, layer)| {
                let batch = match layer {
                    Some(layer) => batch(rt, layer.layer(inner())),
                    None => batch(rt, inner()),
                };
                (*name, batch)
            })
            .collect();
        let paired = Run {
            rt,
            rounds: run.rounds.min(ROUNDS),
            filter: None,
        };
        paired.group("redis_rate_limit", "immediate", variants);
        // CPU over long runs (the schedstat counters move at scheduler ticks, so short batches
        // would read mostly the tick), and what reached Redis.
        let server = format!("/proc/{}/schedstat", redis.pid().unwrap_or(0));
        for (name, layer) in &layers {
            // About a second each: a round trip per call in exact mode, none in the others.
            let n = if *name == "redis_exact" {
                5_000
            } else {
                500_000
            };
            redis.reset_stats();
            let (cpu0, server0, start) = (thread_cpu_ns(), schedstat_ns(&server), Instant::now());
            match layer {
                Some(layer) => rt.block_on(calls(&mut layer.layer(inner()), n)),
                None => rt.block_on(calls(&mut inner(), n)),
            }
            let wall = start.elapsed().as_nanos() as f64;
            let cpu = thread_cpu_ns().saturating_sub(cpu0) as f64;
            let server = schedstat_ns(&server).saturating_sub(server0) as f64;
            let n = n as f64;
            println!(
                "redis_rate_limit/{name}/run: per request {:.0} ns wall, {:.0} ns CPU of the \
                 bench thread, {:.0} ns CPU of redis-server, {:.3} script runs",
                wall / n,
                cpu / n,
                server / n,
                redis.script_calls() as f64 / n,
            );
        }
    }
}
