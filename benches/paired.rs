//! Wall time of the four-layer stack over bare, measured in pairs:
//! `cargo bench -p pingora-tower-benches --bench paired`.
//!
//! criterion (`layers`) times `bare` for a few seconds, then each variant for a few seconds; on a
//! shared virtual machine the speed drifts between the two, and one run's `variant - bare` moves
//! by ±150 ns on the yield-once path. Here every round times one batch of each service back to
//! back (`bare` and the variants in a rotating order), takes `variant - bare` of that round, and
//! reports the median and quartiles of those differences over all rounds: drift slower than a
//! round (a few milliseconds) cancels out. See `README.md` beside this file.

use std::convert::Infallible;
use std::fmt::Debug;
use std::time::Duration;

use http::{Request, Response};
use middlewares::retry::ReplayBody;
use pingora_tower_benches::configs::{our_stack, tower_stack};
use pingora_tower_benches::{calls, inner};
use tokio::runtime::Runtime;
use tower::Service;

/// Calls per timed batch.
const BATCH: u64 = 500;
/// Rounds per inner shape (`PAIRED_ROUNDS` overrides).
const ROUNDS: usize = 2_000;
/// Untimed rounds first, so every service and the allocator are warm.
const WARM_UP_ROUNDS: usize = 100;

/// The variants of one round, `bare` first.
const VARIANTS: [&str; 4] = ["bare", "ours", "tower_no_clone", "tower_clone"];

fn main() {
    // `cargo bench` passes `--bench`, and a filter when given; this bench takes neither.
    let rounds = std::env::var("PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    println!(
        "stack over bare, ns per call: median [quartiles] of {rounds} paired rounds of {BATCH} calls"
    );
    shape(
        &rt,
        "immediate",
        rounds,
        inner!(immediate, String, String),
        inner!(immediate, ReplayBody<String>, String),
    );
    shape(
        &rt,
        "yield_once",
        rounds,
        inner!(yield_once, String, String),
        inner!(yield_once, ReplayBody<String>, String),
    );
}

/// Measures every variant over the inner services `make()` / `make_replay()` answer with.
fn shape<S, SR>(
    rt: &Runtime,
    inner: &str,
    rounds: usize,
    make: impl Fn() -> S,
    make_replay: impl Fn() -> SR,
) where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone,
    SR: Service<Request<ReplayBody<String>>, Response = Response<String>, Error = Infallible>
        + Clone,
{
    // tower's `RateLimit` makes its timer when built: inside the runtime.
    let _runtime = rt.enter();
    let mut bare = make();
    let mut ours = our_stack().service(make_replay());
    let mut tower_no_clone = tower_stack(false).service(make());
    let mut tower_clone = tower_stack(true).service(make());
    // Per variant, the per-call time of each round's batch.
    let mut times: [Vec<f64>; VARIANTS.len()] = Default::default();
    rt.block_on(async {
        for round in 0..WARM_UP_ROUNDS + rounds {
            let mut batch = [Duration::ZERO; VARIANTS.len()];
            // Rotate the order, so no variant always runs right after another.
            for step in 0..VARIANTS.len() {
                let variant = (round + step) % VARIANTS.len();
                batch[variant] = match variant {
                    0 => timed(&mut bare).await,
                    1 => timed(&mut ours).await,
                    2 => timed(&mut tower_no_clone).await,
                    _ => timed(&mut tower_clone).await,
                };
            }
            if round >= WARM_UP_ROUNDS {
                for (times, took) in times.iter_mut().zip(batch) {
                    times.push(took.as_nanos() as f64 / BATCH as f64);
                }
            }
        }
    });
    let (bare_times, variants) = times.split_first().expect("bare is measured");
    println!(
        "  {inner:<10} bare {:>7.1} ns/call",
        quartiles(bare_times.clone())[1]
    );
    for (name, times) in VARIANTS[1..].iter().zip(variants) {
        let over: Vec<f64> = times.iter().zip(bare_times).map(|(t, b)| t - b).collect();
        let [q1, median, q3] = quartiles(over);
        println!("  {inner:<10} {name:<15} {median:>+7.1}  [{q1:+.1}, {q3:+.1}]");
    }
}

/// Per-call time of one batch on `svc`.
async fn timed<S>(svc: &mut S) -> Duration
where
    S: Service<Request<String>, Response = Response<String>>,
    S::Error: Debug,
{
    calls(svc, BATCH).await
}

/// The first quartile, the median and the third quartile of `values`.
fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}
