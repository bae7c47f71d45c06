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
/// Prometheus metrics. A request without `traceparent` or `x-request-id`, so both are made.
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
