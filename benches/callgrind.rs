//! Instructions per call of each `middlewares` layer, its baselines and the four-layer stack,
//! counted by callgrind through `gungraun`:
//! `cargo bench -p pingora-tower-benches --bench callgrind` (needs `gungraun-runner`, see
//! `README.md` beside this file).
//!
//! Every benchmark makes [`CALLS`] calls on a service that already answered [`WARM_UP`] calls
//! (the warm-up and the set-up run outside the counted function), so the per-call figure is the
//! reported `Instructions` divided by [`CALLS`]; the one `block_on` around the loop adds well
//! under one instruction per call. The variants and the inner services are those of the
//! criterion bench `layers`, except that every inner service answers `Response<String>`.
//! `callgrind_table.py` beside this file turns gungraun's summaries into per-call figures and
//! overheads over `bare`.

// gungraun's macros generate public modules and functions without docs.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU32;

use gungraun::{library_benchmark, library_benchmark_group, main};
use http::{Request, Response};
use middlewares::retry::ReplayBody;
use pingora_tower_benches::configs::{
    our_rate_limit, our_stack, tower_governor_layer, tower_resilience_breaker, tower_stack,
    BudgetedNeverRetry, NeverRetry, DEADLINE,
};
use pingora_tower_benches::{calls, inner, GovernorLayer, HUGE_RATE};
use tokio::runtime::Runtime;
use tower::retry::RetryLayer as TowerRetryLayer;
use tower::timeout::TimeoutLayer as TowerTimeoutLayer;
use tower::{Layer, Service};

/// Calls counted per benchmark.
const CALLS: u64 = 1_000;
/// Calls made before counting starts: the first calls pay for lazily made state (the timer
/// wheel, the breaker's first permit, the limiter's first CAS miss).
const WARM_UP: u64 = 200;
/// What a benchmark measures: the inner service alone, one layer over it, or a stack.
#[derive(Debug, Clone, Copy)]
enum Variant {
    Bare,
    Timeout,
    TowerTimeout,
    RateLimit,
    Governor,
    Retry,
    TowerRetryClone,
    TowerRetryNoClone,
    TowerRetryBudget,
    CircuitBreaker,
    TowerResilience,
    Stack,
    TowerStackClone,
    TowerStackNoClone,
    // Over an inner service answering axum's `Body` (which `tower_governor` needs to answer
    // `429` with).
    GovernorStdClock,
    BareAxum,
    RateLimitAxum,
    GovernorAxum,
    TowerGovernor,
}

/// A warmed-up service on its own current-thread runtime, ready to make `n` counted calls.
struct Runner {
    run: Box<dyn FnMut(u64)>,
}

impl Runner {
    /// Makes the service inside the runtime `rt` (tower's `RateLimit` needs one to build its
    /// timer) and warms it up.
    fn new<S, R: 'static>(rt: Runtime, make: impl FnOnce() -> S) -> Runner
    where
        S: Service<Request<String>, Response = Response<R>> + 'static,
        S::Error: std::fmt::Debug,
    {
        let mut svc = {
            let _enter = rt.enter();
            make()
        };
        rt.block_on(calls(&mut svc, WARM_UP));
        Runner {
            run: Box::new(move |n| {
                black_box(rt.block_on(calls(&mut svc, n)));
            }),
        }
    }
}

/// Builds `variant` over the inner service made by `make` (`make_replay` for the retry layer,
/// whose inner service sees `ReplayBody` requests; `make_axum` for the `…Axum` variants).
fn runner<S, SR, SA>(
    variant: Variant,
    make: impl Fn() -> S,
    make_replay: impl Fn() -> SR,
    make_axum: impl Fn() -> SA,
) -> Runner
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    SR: Service<Request<ReplayBody<String>>, Response = Response<String>, Error = Infallible>
        + Clone
        + 'static,
    SA: Service<Request<String>, Response = Response<axum::body::Body>, Error = Infallible>
        + Clone
        + 'static,
{
    let rate = NonZeroU32::new(HUGE_RATE).expect("non-zero");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    match variant {
        Variant::Bare => Runner::new(rt, make),
        Variant::Timeout => Runner::new(rt, || middlewares::timeout(5_000).layer(make())),
        Variant::TowerTimeout => Runner::new(rt, || TowerTimeoutLayer::new(DEADLINE).layer(make())),
        Variant::RateLimit => Runner::new(rt, || our_rate_limit().layer(make())),
        Variant::Governor => Runner::new(rt, || GovernorLayer::per_second(rate).layer(make())),
        Variant::GovernorStdClock => Runner::new(rt, || {
            GovernorLayer::per_second_std_clock(rate).layer(make())
        }),
        Variant::Retry => Runner::new(rt, || middlewares::retry(2).layer(make_replay())),
        Variant::TowerRetryClone => Runner::new(rt, || {
            TowerRetryLayer::new(NeverRetry {
                clone_request: true,
            })
            .layer(make())
        }),
        Variant::TowerRetryNoClone => Runner::new(rt, || {
            TowerRetryLayer::new(NeverRetry {
                clone_request: false,
            })
            .layer(make())
        }),
        Variant::TowerRetryBudget => Runner::new(rt, || {
            TowerRetryLayer::new(BudgetedNeverRetry::default()).layer(make())
        }),
        Variant::CircuitBreaker => Runner::new(rt, || {
            middlewares::circuit_breaker(50, 10_000).layer(make())
        }),
        Variant::TowerResilience => {
            let layer = tower_resilience_breaker();
            Runner::new(rt, || layer.layer(make()))
        }
        Variant::Stack => Runner::new(rt, || our_stack().service(make_replay())),
        Variant::TowerStackClone => Runner::new(rt, || tower_stack(true).service(make())),
        Variant::TowerStackNoClone => Runner::new(rt, || tower_stack(false).service(make())),
        Variant::BareAxum => Runner::new(rt, make_axum),
        Variant::RateLimitAxum => Runner::new(rt, || our_rate_limit().layer(make_axum())),
        Variant::GovernorAxum => {
            Runner::new(rt, || GovernorLayer::per_second(rate).layer(make_axum()))
        }
        Variant::TowerGovernor => Runner::new(rt, || tower_governor_layer().layer(make_axum())),
    }
}

/// Set-up of the `immediate` benchmarks: the inner future is ready on its first poll.
fn immediate(variant: Variant) -> Runner {
    runner(
        variant,
        inner!(immediate, String, String),
        inner!(immediate, ReplayBody<String>, String),
        inner!(immediate, String, axum::body::Body),
    )
}

/// Set-up of the `yield_once` benchmarks: the inner future is `Pending` once, so timeouts arm
/// their timer.
fn yield_once(variant: Variant) -> Runner {
    runner(
        variant,
        inner!(yield_once, String, String),
        inner!(yield_once, ReplayBody<String>, String),
        inner!(yield_once, String, axum::body::Body),
    )
}

/// Makes [`CALLS`] calls; the runner is handed back so dropping it (the runtime, the service) is
/// not counted.
fn run(mut runner: Runner) -> Runner {
    (runner.run)(CALLS);
    runner
}

// Every variant over the `immediate` inner service.
#[library_benchmark(setup = immediate)]
#[bench::bare(Variant::Bare)]
#[bench::timeout(Variant::Timeout)]
#[bench::tower_timeout(Variant::TowerTimeout)]
#[bench::rate_limit(Variant::RateLimit)]
#[bench::governor(Variant::Governor)]
#[bench::governor_std_clock(Variant::GovernorStdClock)]
#[bench::retry(Variant::Retry)]
#[bench::tower_retry_clone(Variant::TowerRetryClone)]
#[bench::tower_retry_no_clone(Variant::TowerRetryNoClone)]
#[bench::tower_retry_budget(Variant::TowerRetryBudget)]
#[bench::circuit_breaker(Variant::CircuitBreaker)]
#[bench::tower_resilience(Variant::TowerResilience)]
#[bench::stack(Variant::Stack)]
#[bench::tower_stack_clone(Variant::TowerStackClone)]
#[bench::tower_stack_no_clone(Variant::TowerStackNoClone)]
#[bench::bare_axum(Variant::BareAxum)]
#[bench::rate_limit_axum(Variant::RateLimitAxum)]
#[bench::governor_axum(Variant::GovernorAxum)]
#[bench::tower_governor_axum(Variant::TowerGovernor)]
fn calls_immediate(runner: Runner) -> Runner {
    run(runner)
}

// Every variant over the `yield_once` inner service.
#[library_benchmark(setup = yield_once)]
#[bench::bare(Variant::Bare)]
#[bench::timeout(Variant::Timeout)]
#[bench::tower_timeout(Variant::TowerTimeout)]
#[bench::rate_limit(Variant::RateLimit)]
#[bench::governor(Variant::Governor)]
#[bench::governor_std_clock(Variant::GovernorStdClock)]
#[bench::retry(Variant::Retry)]
#[bench::tower_retry_clone(Variant::TowerRetryClone)]
#[bench::tower_retry_no_clone(Variant::TowerRetryNoClone)]
#[bench::tower_retry_budget(Variant::TowerRetryBudget)]
#[bench::circuit_breaker(Variant::CircuitBreaker)]
#[bench::tower_resilience(Variant::TowerResilience)]
#[bench::stack(Variant::Stack)]
#[bench::tower_stack_clone(Variant::TowerStackClone)]
#[bench::tower_stack_no_clone(Variant::TowerStackNoClone)]
#[bench::bare_axum(Variant::BareAxum)]
#[bench::rate_limit_axum(Variant::RateLimitAxum)]
#[bench::governor_axum(Variant::GovernorAxum)]
#[bench::tower_governor_axum(Variant::TowerGovernor)]
fn calls_yield_once(runner: Runner) -> Runner {
    run(runner)
}

library_benchmark_group!(
    name = layers;
    benchmarks = calls_immediate, calls_yield_once
);

main!(library_benchmark_groups = layers);
