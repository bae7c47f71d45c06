//! Per-call overhead of each `middlewares` layer against the bare service, tower's own layer and
//! peer crates, measured in the same run: `cargo bench -p pingora-tower-benches --bench layers`.
//!
//! Every bench id is `group/variant/inner`: `inner` is `immediate` (the inner future is ready on
//! its first poll) or `yield_once` (it returns `Pending` once, so timeouts arm their timer). Each
//! group has its own `bare` variant (the inner service alone) so overheads are read against a
//! baseline measured moments earlier. See `README.md` beside this file.

use std::convert::Infallible;
use std::fmt::Debug;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use http::{Request, Response};
use middlewares::retry::ReplayBody;
use pingora_tower_benches::configs::{
    our_rate_limit, our_stack, tower_governor_layer, tower_resilience_breaker, tower_stack,
    BudgetedNeverRetry, NeverRetry, DEADLINE, HUGE_CONCURRENCY, ONE_SECOND,
};
use pingora_tower_benches::{calls, inner, GovernorLayer, HUGE_RATE};
use tokio::runtime::Runtime;
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer as TowerRateLimitLayer};
use tower::retry::RetryLayer as TowerRetryLayer;
use tower::timeout::TimeoutLayer as TowerTimeoutLayer;
use tower::{Layer, Service};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// Benches `make()` as `<group>/<variant>/<inner>`. A fresh service is made per sample (outside
/// the timed loop); layers built outside `make` keep their shared state across samples.
fn bench<S, B, R>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    variant: &str,
    inner: &str,
    make: impl Fn() -> S,
) where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Debug,
    B: Default,
{
    group.bench_function(BenchmarkId::new(variant, inner), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = make();
            async move { calls(&mut svc, iters).await }
        })
    });
}

/// Inner services answering `Response<String>` to `Request<String>`.
type Plain = Request<String>;

fn timeout<S>(c: &mut Criterion, rt: &Runtime, inner: &str, make: impl Fn() -> S + Copy)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible>,
{
    let mut g = c.benchmark_group("timeout");
    let ours = middlewares::timeout(5_000);
    bench(&mut g, rt, "bare", inner, make);
    bench(&mut g, rt, "ours", inner, || ours.layer(make()));
    let tower = TowerTimeoutLayer::new(DEADLINE);
    bench(&mut g, rt, "tower", inner, || tower.layer(make()));
    g.finish();
}

fn rate_limit<S>(c: &mut Criterion, rt: &Runtime, inner: &str, make: impl Fn() -> S + Copy)
where
    S: Service<Plain, Response = Response<axum::body::Body>, Error = Infallible> + Clone,
{
    let mut g = c.benchmark_group("rate_limit");
    let rate = NonZeroU32::new(HUGE_RATE).expect("non-zero");
    let ours = our_rate_limit();
    let governor = GovernorLayer::per_second(rate);
    let governor_std_clock = GovernorLayer::per_second_std_clock(rate);
    let tower_governor = tower_governor_layer();
    let concurrency = ConcurrencyLimitLayer::new(HUGE_CONCURRENCY);
    let tower_rate = TowerRateLimitLayer::new(u64::from(HUGE_RATE), ONE_SECOND);
    bench(&mut g, rt, "bare", inner, make);
    bench(&mut g, rt, "ours", inner, || ours.layer(make()));
    bench(&mut g, rt, "governor", inner, || governor.layer(make()));
    bench(&mut g, rt, "governor_std_clock", inner, || {
        governor_std_clock.layer(make())
    });
    bench(&mut g, rt, "tower_governor", inner, || {
        tower_governor.layer(make())
    });
    bench(&mut g, rt, "tower_concurrency_limit", inner, || {
        concurrency.layer(make())
    });
    bench(&mut g, rt, "tower_rate_limit", inner, || {
        tower_rate.layer(make())
    });
    g.finish();
}

fn retry<S, SR>(
    c: &mut Criterion,
    rt: &Runtime,
    inner: &str,
    make: impl Fn() -> S + Copy,
    make_replay: impl Fn() -> SR + Copy,
) where
    S: Service<Plain, Response = Response<String>, Error = Infallible> + Clone,
    SR: Service<Request<ReplayBody<String>>, Response = Response<String>, Error = Infallible>
        + Clone,
{
    let mut g = c.benchmark_group("retry");
    let ours = middlewares::retry(2);
    let no_clone = TowerRetryLayer::new(NeverRetry {
        clone_request: false,
    });
    let clone = TowerRetryLayer::new(NeverRetry {
        clone_request: true,
    });
    let budgeted = TowerRetryLayer::new(BudgetedNeverRetry::default());
    bench(&mut g, rt, "bare", inner, make);
    bench(&mut g, rt, "ours", inner, || ours.layer(make_replay()));
    bench(&mut g, rt, "tower_no_clone", inner, || {
        no_clone.layer(make())
    });
    bench(&mut g, rt, "tower_clone", inner, || clone.layer(make()));
    bench(&mut g, rt, "tower_clone_budget", inner, || {
        budgeted.layer(make())
    });
    g.finish();
}

fn circuit_breaker<S>(c: &mut Criterion, rt: &Runtime, inner: &str, make: impl Fn() -> S + Copy)
where
    S: Service<Plain, Response = Response<String>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut g = c.benchmark_group("circuit_breaker");
    let ours = middlewares::circuit_breaker(50, 10_000);
    let resilience = tower_resilience_breaker();
    bench(&mut g, rt, "bare", inner, make);
    bench(&mut g, rt, "ours", inner, || ours.layer(make()));
    bench(&mut g, rt, "tower_resilience", inner, || {
        resilience.layer(make())
    });
    g.finish();
}

fn stack<S, SR>(
    c: &mut Criterion,
    rt: &Runtime,
    inner: &str,
    make: impl Fn() -> S + Copy,
    make_replay: impl Fn() -> SR + Copy,
) where
    S: Service<Plain, Response = Response<String>, Error = Infallible> + Clone,
    SR: Service<Request<ReplayBody<String>>, Response = Response<String>, Error = Infallible>
        + Clone,
{
    let mut g = c.benchmark_group("stack");
    let ours = our_stack();
    // tower's `RateLimit` is not `Clone`: each sample calls its own instance directly.
    let (tower_no_clone, tower_clone) = (tower_stack(false), tower_stack(true));
    bench(&mut g, rt, "bare", inner, make);
    bench(&mut g, rt, "ours", inner, || ours.service(make_replay()));
    bench(&mut g, rt, "tower_no_clone", inner, || {
        tower_no_clone.service(make())
    });
    bench(&mut g, rt, "tower_clone", inner, || {
        tower_clone.service(make())
    });
    g.finish();
}

/// Runs every group on one inner service shape (the shape is a macro token because the inner
/// service's request type differs between groups).
macro_rules! for_each_inner {
    ($shape:ident, $c:expr, $rt:expr) => {{
        let name = stringify!($shape);
        timeout($c, $rt, name, inner!($shape, String, String));
        rate_limit($c, $rt, name, inner!($shape, String, axum::body::Body));
        retry(
            $c,
            $rt,
            name,
            inner!($shape, String, String),
            inner!($shape, ReplayBody<String>, String),
        );
        circuit_breaker($c, $rt, name, inner!($shape, String, String));
        stack(
            $c,
            $rt,
            name,
            inner!($shape, String, String),
            inner!($shape, ReplayBody<String>, String),
        );
    }};
}

fn layers(c: &mut Criterion) {
    let rt = runtime();
    for_each_inner!(immediate, c, &rt);
    for_each_inner!(yield_once, c, &rt);
}

criterion_group! {
    name = benches;
    // Short runs: the whole bench finishes in a few minutes on a shared 2-core machine.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_millis(2500))
        .sample_size(20);
    targets = layers
}
criterion_main!(benches);
