//! Behaviour tests for the circuit breaker layer, on a paused clock.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use middlewares::circuit_breaker::{
    CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer, Outcome, State, Window, DEFAULT_KEY,
};
use middlewares::Rejection;
use tokio::sync::Semaphore;
use tokio::time::{advance, Instant};
use tower::{Layer, Service, ServiceExt};

/// A scripted inner service: counts calls (in `call`, before any polling), answers with the
/// current status or error, optionally sleeps or parks on a gate until released.
struct Backend {
    calls: AtomicUsize,
    status: AtomicU16,
    error: AtomicBool,
    delay_ms: AtomicU64,
    park: AtomicBool,
    gate: Semaphore,
}

impl Backend {
    fn new() -> Arc<Backend> {
        Arc::new(Backend {
            calls: AtomicUsize::new(0),
            status: AtomicU16::new(200),
            error: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            park: AtomicBool::new(false),
            gate: Semaphore::new(0),
        })
    }
    fn answer(&self, status: u16) {
        self.error.store(false, Ordering::SeqCst);
        self.status.store(status, Ordering::SeqCst);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Svc(Arc<Backend>);

type BoxFut = Pin<Box<dyn Future<Output = Result<Response<String>, &'static str>> + Send>>;

impl Service<Request<String>> for Svc {
    type Response = Response<String>;
    type Error = &'static str;
    type Future = BoxFut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<String>) -> Self::Future {
        let b = self.0.clone();
        b.calls.fetch_add(1, Ordering::SeqCst);
        let status = b.status.load(Ordering::SeqCst);
        let error = b.error.load(Ordering::SeqCst);
        let delay = Duration::from_millis(b.delay_ms.load(Ordering::SeqCst));
        let park = b.park.load(Ordering::SeqCst);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if park {
                b.gate.acquire().await.map_err(|_| "closed")?.forget();
            }
            if error {
                return Err("boom");
            }
            let mut res = Response::new("body".to_string());
            *res.status_mut() = StatusCode::from_u16(status).map_err(|_| "bad status")?;
            Ok(res)
        })
    }
}

fn req(path: &str) -> Request<String> {
    Request::builder().uri(path).body(String::new()).unwrap()
}

async fn send<S>(svc: &mut S, path: &str) -> Result<Response<String>, &'static str>
where
    S: Service<Request<String>, Response = Response<String>, Error = &'static str>,
{
    svc.ready().await?.call(req(path)).await
}

async fn status<S>(svc: &mut S) -> StatusCode
where
    S: Service<Request<String>, Response = Response<String>, Error = &'static str>,
{
    send(svc, "/").await.unwrap().status()
}

/// The short form's breaker (50 %, 10 s) around a fresh backend.
fn default_stack() -> (Arc<Backend>, CircuitBreakerLayer, CircuitBreaker<Svc>) {
    let backend = Backend::new();
    let layer = middlewares::circuit_breaker(50, 10_000);
    let svc = layer.layer(Svc(backend.clone()));
    (backend, layer, svc)
}

async fn trip(backend: &Backend, svc: &mut CircuitBreaker<Svc>, n: usize) {
    backend.answer(500);
    for _ in 0..n {
        assert_eq!(status(svc).await, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[tokio::test(start_paused = true)]
async fn opens_at_threshold_only_after_minimum_calls() {
    let (backend, layer, mut svc) = default_stack();
    let handle = layer.handle();
    // 9 failures: 100 % but below the minimum of 10 calls.
    trip(&backend, &mut svc, 9).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Closed));
    // The 10th opens it.
    trip(&backend, &mut svc, 1).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
    assert_eq!(status(&mut svc).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn opens_at_exact_rate_not_below() {
    let (backend, layer, mut svc) = default_stack();
    let handle = layer.handle();
    backend.answer(200);
    for _ in 0..6 {
        status(&mut svc).await;
    }
    trip(&backend, &mut svc, 4).await; // 4/10 = 40 %
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Closed));
    // Next failure evicts nothing (window 20): 5/11 = 45 %; one more: 6/12 = 50 %.
    trip(&backend, &mut svc, 1).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Closed));
    trip(&backend, &mut svc, 1).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn inner_errors_count_and_pass_through_unchanged() {
    let (backend, layer, mut svc) = default_stack();
    backend.error.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(send(&mut svc, "/").await.unwrap_err(), "boom");
    }
    assert_eq!(layer.handle().state(DEFAULT_KEY), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn client_errors_do_not_count() {
    let (backend, layer, mut svc) = default_stack();
    backend.answer(404);
    for _ in 0..30 {
        assert_eq!(status(&mut svc).await, StatusCode::NOT_FOUND);
    }
    let m = layer.handle().metrics(DEFAULT_KEY).unwrap();
    assert_eq!(m.state, State::Closed);
    assert_eq!((m.calls, m.failures), (20, 0));
    assert_eq!(backend.calls(), 30);
}

#[tokio::test(start_paused = true)]
async fn open_answers_503_with_retry_after_without_calling_inner() {
    let (backend, _layer, mut svc) = default_stack();
    trip(&backend, &mut svc, 10).await;
    backend.answer(200);
    let res = send(&mut svc, "/").await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "10");
    assert_eq!(res.body(), "", "empty default body");
    advance(Duration::from_millis(2_500)).await;
    let res = send(&mut svc, "/").await.unwrap();
    assert_eq!(res.headers()["retry-after"], "8", "7.5 s rounds up");
    advance(Duration::from_millis(7_400)).await;
    let res = send(&mut svc, "/").await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1", "never below 1");
    assert_eq!(backend.calls(), 10, "inner not called while open");
}

#[tokio::test(start_paused = true)]
async fn half_open_trials_succeed_then_closed() {
    let (backend, layer, mut svc) = default_stack();
    let handle = layer.handle();
    trip(&backend, &mut svc, 10).await;
    advance(Duration::from_secs(10)).await;
    backend.answer(200);
    for i in 0..3 {
        assert_eq!(status(&mut svc).await, StatusCode::OK);
        let expected = if i < 2 {
            State::HalfOpen
        } else {
            State::Closed
        };
        assert_eq!(handle.state(DEFAULT_KEY), Some(expected));
    }
    let m = handle.metrics(DEFAULT_KEY).unwrap();
    assert_eq!(m.calls, 0, "window reset on close");
    // Closed again with a fresh window: 9 failures do not reopen.
    trip(&backend, &mut svc, 9).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn half_open_failures_reopen() {
    let (backend, layer, mut svc) = default_stack();
    let handle = layer.handle();
    trip(&backend, &mut svc, 10).await;
    advance(Duration::from_secs(10)).await;
    // 1 failure of 3 trials is 33 % < 50 %: not decided yet.
    trip(&backend, &mut svc, 1).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::HalfOpen));
    // 2 of 3 is >= 50 % whatever the third does: reopens at once.
    trip(&backend, &mut svc, 1).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
    let res = send(&mut svc, "/").await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "10");
    assert_eq!(backend.calls(), 12);
}

#[tokio::test(start_paused = true)]
async fn wait_in_open_grows_with_backoff_and_resets_on_close() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(1)
        .permitted_calls_in_half_open(1)
        .wait_in_open(Duration::from_secs(10))
        .wait_in_open_backoff(2.0, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut svc = layer.layer(Svc(backend.clone()));
    trip(&backend, &mut svc, 1).await;
    for wait in [10, 20, 40, 60, 60] {
        let res = send(&mut svc, "/").await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], wait.to_string().as_str());
        advance(Duration::from_secs(wait)).await;
        trip(&backend, &mut svc, 1).await; // the trial fails
    }
    advance(Duration::from_secs(60)).await;
    backend.answer(200);
    assert_eq!(status(&mut svc).await, StatusCode::OK);
    assert_eq!(layer.handle().state(DEFAULT_KEY), Some(State::Closed));
    trip(&backend, &mut svc, 1).await;
    let res = send(&mut svc, "/").await.unwrap();
    assert_eq!(
        res.headers()["retry-after"],
        "10",
        "backoff reset by closing"
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_the_wait_within_bounds() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(1)
        .wait_in_open(Duration::from_secs(100))
        .wait_in_open_jitter(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Svc(backend.clone()));
    for _ in 0..10 {
        handle.reset(DEFAULT_KEY);
        trip(&backend, &mut svc, 1).await;
        let res = send(&mut svc, "/").await.unwrap();
        let secs: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((50..=100).contains(&secs), "{secs}");
    }
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_opens() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(Window::Count(4))
        .minimum_calls(4)
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate_threshold(50)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Svc(backend.clone()));
    for _ in 0..2 {
        assert_eq!(status(&mut svc).await, StatusCode::OK);
    }
    backend.delay_ms.store(2_000, Ordering::SeqCst);
    assert_eq!(status(&mut svc).await, StatusCode::OK);
    assert_eq!(
        handle.state(DEFAULT_KEY),
        Some(State::Closed),
        "3 calls < minimum"
    );
    assert_eq!(status(&mut svc).await, StatusCode::OK); // 2 slow of 4 = 50 %
    let m = handle.metrics(DEFAULT_KEY);
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open), "{m:?}");
    assert_eq!(status(&mut svc).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_regardless_of_rate() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .failure_rate_threshold(100)
        .minimum_calls(20)
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Svc(backend.clone()));
    trip(&backend, &mut svc, 2).await;
    backend.answer(200);
    status(&mut svc).await; // breaks the run
    trip(&backend, &mut svc, 2).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Closed));
    assert_eq!(handle.metrics(DEFAULT_KEY).unwrap().consecutive_failures, 2);
    trip(&backend, &mut svc, 1).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_calls() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .sliding_window(Window::Time(Duration::from_secs(10)))
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Svc(backend.clone()));
    trip(&backend, &mut svc, 3).await;
    assert_eq!(handle.metrics(DEFAULT_KEY).unwrap().calls, 3);
    advance(Duration::from_secs(11)).await;
    assert_eq!(
        handle.metrics(DEFAULT_KEY).unwrap().calls,
        0,
        "old seconds gone"
    );
    // Had the 3 old failures stayed, this failure would make 4/4 and open.
    trip(&backend, &mut svc, 1).await;
    backend.answer(200);
    for _ in 0..3 {
        status(&mut svc).await;
    }
    let m = handle.metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.state, m.calls, m.failures), (State::Closed, 4, 1));
    assert_eq!(m.failure_rate, 25.0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_half_open_admits_exactly_the_permitted_trials() {
    let (backend, layer, svc) = default_stack();
    let handle = layer.handle();
    let mut first = svc.clone();
    trip(&backend, &mut first, 10).await;
    advance(Duration::from_secs(10)).await;
    backend.answer(200);
    backend.park.store(true, Ordering::SeqCst);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..100 {
        let svc = svc.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let res = svc.oneshot(req("/")).await.unwrap();
            let retry = res.headers().get("retry-after").cloned();
            let _ = tx.send((res.status(), retry));
        });
    }
    for _ in 0..97 {
        let (status, retry) = rx.recv().await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.unwrap(), "1");
    }
    assert_eq!(
        backend.calls(),
        13,
        "exactly 3 trials reached the inner service"
    );
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::HalfOpen));
    assert_eq!(handle.metrics(DEFAULT_KEY).unwrap().not_permitted, 97);
    backend.gate.add_permits(3);
    for _ in 0..3 {
        assert_eq!(rx.recv().await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Closed));
}

#[test]
fn racing_threads_take_exactly_the_permitted_trials() {
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(1)
        .permitted_calls_in_half_open(3)
        .wait_in_open(Duration::from_secs(10))
        .build()
        .unwrap();
    let breaker = layer.breakers().get("backend-1");
    let t0 = Instant::now();
    breaker
        .try_acquire(t0)
        .unwrap()
        .record(Outcome::Failure, t0);
    assert_eq!(breaker.state(), State::Open);
    let later = t0 + Duration::from_secs(10);
    let barrier = std::sync::Barrier::new(100);
    let permits = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..100 {
            s.spawn(|| {
                barrier.wait();
                if let Ok(p) = breaker.try_acquire(later) {
                    permits.lock().unwrap().push(p);
                }
            });
        }
    });
    let permits = permits.into_inner().unwrap();
    assert_eq!(permits.len(), 3);
    assert!(permits.iter().all(|p| p.is_trial()));
    assert!(!breaker.is_call_permitted(later));
    for p in permits {
        p.record(Outcome::Success, later);
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn cancelled_trial_releases_its_permit() {
    let (backend, layer, mut svc) = default_stack();
    let handle = layer.handle();
    let breaker = handle.breaker(DEFAULT_KEY).unwrap();
    trip(&backend, &mut svc, 10).await;
    advance(Duration::from_secs(10)).await;
    backend.answer(200);
    backend.park.store(true, Ordering::SeqCst);

    // A trial cancelled by a client-side timeout while in flight.
    let cancelled = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(req("/")));
    assert!(cancelled.await.is_err(), "timed out");
    // A trial whose future is dropped before ever being polled.
    let unpolled = svc.ready().await.unwrap().call(req("/"));
    let f2 = svc.ready().await.unwrap().call(req("/"));
    let f3 = svc.ready().await.unwrap().call(req("/"));
    assert!(!breaker.is_call_permitted(Instant::now()));
    assert_eq!(status(&mut svc).await, StatusCode::SERVICE_UNAVAILABLE);
    drop(unpolled);
    assert!(breaker.is_call_permitted(Instant::now()));
    let f4 = svc.ready().await.unwrap().call(req("/"));
    assert_eq!(backend.calls(), 15, "10 + timed-out, unpolled, f2, f3, f4");
    assert_eq!(
        handle.metrics(DEFAULT_KEY).unwrap().calls,
        0,
        "cancelled ones not counted"
    );
    backend.gate.add_permits(3);
    for f in [f2, f3, f4] {
        assert_eq!(f.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_isolated() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(2)
        .key_fn(|info| info.uri.path().to_string())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Svc(backend.clone()));
    backend.answer(500);
    for _ in 0..2 {
        send(&mut svc, "/a").await.unwrap();
    }
    assert_eq!(
        send(&mut svc, "/a").await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    backend.answer(200);
    assert_eq!(send(&mut svc, "/b").await.unwrap().status(), StatusCode::OK);
    assert_eq!(handle.state("/a"), Some(State::Open));
    assert_eq!(handle.state("/b"), Some(State::Closed));
    assert_eq!(
        handle.state(DEFAULT_KEY),
        None,
        "no default breaker when keyed"
    );
    let mut keys = handle.keys();
    keys.sort();
    assert_eq!(keys, ["/a", "/b"]);
}

#[tokio::test(start_paused = true)]
async fn keyed_registry_is_bounded() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .max_keys(4)
        .key_fn(|info| info.uri.path().to_string())
        .build()
        .unwrap();
    let mut svc = layer.layer(Svc(backend.clone()));
    for i in 0..50 {
        send(&mut svc, &format!("/{i}")).await.unwrap();
    }
    assert!(layer.breakers().len() <= 4, "{}", layer.breakers().len());
}

#[tokio::test(start_paused = true)]
async fn handle_forces_states_and_reports_metrics() {
    let (backend, layer, mut svc) = default_stack();
    let handle = layer.handle();
    assert_eq!(handle.keys(), [DEFAULT_KEY]);

    handle.force_open(DEFAULT_KEY);
    let res = send(&mut svc, "/").await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "10");
    assert_eq!(backend.calls(), 0);
    advance(Duration::from_secs(3_600)).await;
    assert_eq!(
        status(&mut svc).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "stays open"
    );

    handle.force_closed(DEFAULT_KEY);
    trip(&backend, &mut svc, 25).await;
    let m = handle.metrics(DEFAULT_KEY).unwrap();
    assert_eq!(m.state, State::ForcedClosed);
    assert_eq!((m.calls, m.failures, m.slow_calls), (20, 20, 0));
    assert_eq!(m.failure_rate, 100.0);
    assert_eq!(m.not_permitted, 2);

    handle.disable(DEFAULT_KEY);
    trip(&backend, &mut svc, 25).await;
    let m = handle.metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.state, m.calls), (State::Disabled, 0));

    handle.reset(DEFAULT_KEY);
    let m = handle.metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.state, m.calls, m.failures), (State::Closed, 0, 0));
    trip(&backend, &mut svc, 10).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
    assert_eq!(backend.calls(), 60);
}

#[tokio::test(start_paused = true)]
async fn transition_callback_hears_every_transition_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle_cell = Arc::new(std::sync::OnceLock::<CircuitBreakerHandle>::new());
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .wait_in_open(Duration::from_secs(5))
        .on_state_transition({
            let seen = seen.clone();
            let handle_cell = handle_cell.clone();
            move |key: &str, from, to| {
                // Runs outside the breaker's lock: reading the breaker here must not deadlock,
                // and it already sees the new state.
                let now = handle_cell.get().and_then(|h| h.state(key));
                assert_eq!(now, Some(to));
                seen.lock().unwrap().push((key.to_string(), from, to))
            }
        })
        .build()
        .unwrap();
    let _ = handle_cell.set(layer.handle());
    let mut svc = layer.layer(Svc(backend.clone()));
    trip(&backend, &mut svc, 10).await;
    advance(Duration::from_secs(5)).await;
    backend.answer(200);
    for _ in 0..3 {
        assert_eq!(status(&mut svc).await, StatusCode::OK);
    }
    layer.handle().force_open(DEFAULT_KEY);
    let seen = seen.lock().unwrap().clone();
    let k = DEFAULT_KEY.to_string();
    assert_eq!(
        seen,
        [
            (k.clone(), State::Closed, State::Open),
            (k.clone(), State::Open, State::HalfOpen),
            (k.clone(), State::HalfOpen, State::Closed),
            (k, State::Closed, State::ForcedOpen),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_breaker() {
    let (backend, layer, mut svc) = default_stack();
    let mut clone = svc.clone();
    assert_eq!(clone.handle().keys(), [DEFAULT_KEY]);
    assert_eq!(clone.breakers().len(), 1);
    let other_backend = Backend::new();
    let mut other = layer.layer(Svc(other_backend.clone()));
    trip(&backend, &mut svc, 10).await;
    assert_eq!(status(&mut clone).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status(&mut other).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.calls(), 10);
    assert_eq!(other_backend.calls(), 0);
}

#[test]
fn config_errors_name_field_and_value() {
    let err =
        |b: middlewares::circuit_breaker::CircuitBreakerBuilder| b.build().unwrap_err().to_string();
    let b = CircuitBreakerLayer::builder;
    assert_eq!(
        err(b().failure_rate_threshold(101)),
        "circuit_breaker.failure_rate_threshold must be 1..=100, got 101"
    );
    assert_eq!(
        err(b().failure_rate_threshold(0)),
        "circuit_breaker.failure_rate_threshold must be 1..=100, got 0"
    );
    assert_eq!(
        err(b().minimum_calls(0)),
        "circuit_breaker.minimum_calls must be > 0, got 0"
    );
    assert_eq!(
        err(b().sliding_window(Window::Count(0))),
        "circuit_breaker.sliding_window must be a count in 1..=1000000, got 0"
    );
    assert!(err(b().sliding_window(Window::Time(Duration::ZERO))).contains("sliding_window"));
    assert_eq!(
        err(b().wait_in_open(Duration::ZERO)),
        "circuit_breaker.wait_in_open must be > 0 and at most a year, got 0ns"
    );
    assert_eq!(
        err(b().wait_in_open_backoff(0.5, Duration::from_secs(600))),
        "circuit_breaker.wait_in_open_backoff must be a multiplier >= 1.0, got 0.5"
    );
    assert!(err(b().wait_in_open_backoff(2.0, Duration::from_secs(1)))
        .contains("a max >= wait_in_open"));
    assert_eq!(
        err(b().wait_in_open_jitter(1.5)),
        "circuit_breaker.wait_in_open_jitter must be 0.0..=1.0, got 1.5"
    );
    assert_eq!(
        err(b().permitted_calls_in_half_open(0)),
        "circuit_breaker.permitted_calls_in_half_open must be 1..=100000, got 0"
    );
    assert_eq!(
        err(b().consecutive_failures(0)),
        "circuit_breaker.consecutive_failures must be > 0, got 0"
    );
    assert!(err(b().slow_call_rate_threshold(50)).contains("set together with slow_call_duration"));
    assert_eq!(
        err(b()
            .slow_call_duration(Duration::from_secs(1))
            .slow_call_rate_threshold(0)),
        "circuit_breaker.slow_call_rate_threshold must be 1..=100, got 0"
    );
    assert_eq!(
        err(b().max_keys(0)),
        "circuit_breaker.max_keys must be > 0, got 0"
    );
    let e = b().failure_rate_threshold(101).build().unwrap_err();
    assert_eq!(e.field(), "circuit_breaker.failure_rate_threshold");
    assert!(b().build().is_ok());
}

#[test]
#[should_panic(expected = "failure_rate_threshold must be 1..=100, got 101")]
fn short_form_panics_on_bad_literal() {
    let _ = middlewares::circuit_breaker(101, 1_000);
}

#[tokio::test(start_paused = true)]
async fn custom_classifier_decides_failures() {
    let backend = Backend::new();
    let layer = CircuitBreakerLayer::builder()
        .minimum_calls(2)
        .classify(|res| match res {
            Ok(s) if s == StatusCode::TOO_MANY_REQUESTS => Outcome::Failure,
            Ok(s) if s.is_server_error() => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(()) => Outcome::Failure,
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Svc(backend.clone()));
    trip(&backend, &mut svc, 5).await; // 500s ignored
    let m = handle.metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.state, m.calls), (State::Closed, 0));
    backend.answer(429);
    status(&mut svc).await;
    status(&mut svc).await;
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
    assert_eq!(
        layer.breakers().classify(Ok(StatusCode::TOO_MANY_REQUESTS)),
        Outcome::Failure
    );
}

#[tokio::test(start_paused = true)]
async fn axum_router_layer_keeps_infallible() {
    use axum::body::Body;
    use axum::routing::get;

    let layer = middlewares::circuit_breaker(50, 10_000);
    let handle = layer.handle();
    let hits = Arc::new(AtomicUsize::new(0));
    let router: axum::Router = axum::Router::new()
        .route(
            "/",
            get({
                let hits = hits.clone();
                move || async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    StatusCode::BAD_GATEWAY
                }
            }),
        )
        .layer(layer);
    fn infallible<S: Service<Request<Body>, Error = Infallible>>(_: &S) {}
    infallible(&router);
    for _ in 0..10 {
        let res = router
            .clone()
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    let res = router
        .clone()
        .oneshot(Request::new(Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "10");
    assert_eq!(hits.load(Ordering::SeqCst), 10);
    assert_eq!(handle.state(DEFAULT_KEY), Some(State::Open));
}

#[test]
fn circuit_open_renders_the_answer() {
    use middlewares::circuit_breaker::CircuitOpen;
    let open = CircuitOpen::new(State::Open, Duration::from_millis(1_200));
    assert_eq!(open.retry_after_secs(), 2);
    assert_eq!(open.to_string(), "circuit breaker open, retry after 2s");
    let res: Response<String> = open.to_response();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "2");
    assert_eq!(open.headers()["retry-after"], "2");
    let full = CircuitOpen::new(State::HalfOpen, Duration::ZERO);
    assert_eq!(full.retry_after_secs(), 1);
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(open);
    assert!(boxed.downcast_ref::<CircuitOpen>().is_some());
}

/// The README's order: a timeout outside the breaker, around a backend that hangs.
fn hanging_behind_timeout(
    layer: &CircuitBreakerLayer,
) -> (
    Arc<Backend>,
    impl Service<Request<String>, Response = Response<String>, Error = &'static str>,
) {
    let backend = Backend::new();
    backend.park.store(true, Ordering::SeqCst);
    let svc = tower::ServiceBuilder::new()
        .layer(
            middlewares::timeout::TimeoutLayer::new(Duration::from_millis(100))
                .honor_client_header(true),
        )
        .layer(layer.clone())
        .service(Svc(backend.clone()));
    (backend, svc)
}

#[tokio::test(start_paused = true)]
async fn timeouts_outside_the_breaker_count_as_failures_and_open_it() {
    let layer = middlewares::circuit_breaker(50, 10_000);
    let (_backend, mut svc) = hanging_behind_timeout(&layer);
    for _ in 0..10 {
        assert_eq!(status(&mut svc).await, StatusCode::GATEWAY_TIMEOUT);
    }
    let metrics = layer
        .handle()
        .metrics(DEFAULT_KEY)
        .expect("the breaker exists");
    assert_eq!(
        layer.handle().state(DEFAULT_KEY),
        Some(State::Open),
        "{metrics:?}"
    );
    assert_eq!(status(&mut svc).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_counts_as_slow_too() {
    let layer = CircuitBreakerLayer::builder()
        .slow_call_duration(Duration::from_millis(50))
        .build()
        .unwrap();
    let (_backend, mut svc) = hanging_behind_timeout(&layer);
    assert_eq!(status(&mut svc).await, StatusCode::GATEWAY_TIMEOUT);
    let m = layer.handle().metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.calls, m.failures, m.slow_calls), (1, 1, 1), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_per_try_timeouts_count_as_failures() {
    let layer = middlewares::circuit_breaker(50, 10_000);
    let backend = Backend::new();
    backend.park.store(true, Ordering::SeqCst);
    let mut svc = tower::ServiceBuilder::new()
        .layer(
            middlewares::retry::RetryLayer::builder(0)
                .per_try_timeout(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .layer(layer.clone())
        .map_request(|req: Request<middlewares::retry::ReplayBody<String>>| {
            req.map(|_| String::new())
        })
        .service(Svc(backend.clone()));
    for _ in 0..10 {
        assert_eq!(status(&mut svc).await, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(layer.handle().state(DEFAULT_KEY), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_moves_nothing() {
    let layer = middlewares::circuit_breaker(50, 10_000);
    let (backend, mut svc) = hanging_behind_timeout(&layer);
    for _ in 0..10 {
        let call = svc.ready().await.unwrap().call(req("/"));
        // The client gives up before the deadline: the call is cancelled, not failed.
        assert!(tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err());
    }
    assert_eq!(backend.calls(), 10);
    let m = layer.handle().metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.state, m.calls), (State::Closed, 0), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_the_client_shortened_moves_nothing_in_either_order() {
    let shortened = || {
        Request::builder()
            .header("x-request-timeout", "20")
            .body(String::new())
            .unwrap()
    };
    // Timeout outside: the call is dropped on the client's deadline.
    let layer = middlewares::circuit_breaker(50, 10_000);
    let (_backend, mut svc) = hanging_behind_timeout(&layer);
    for _ in 0..10 {
        let res = svc.ready().await.unwrap().call(shortened()).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    let m = layer.handle().metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.state, m.calls), (State::Closed, 0), "{m:?}");

    // Breaker outside: it sees the timeout's 504, marked as the client's deadline.
    let layer = middlewares::circuit_breaker(50, 10_000);
    let backend = Backend::new();
    backend.park.store(true, Ordering::SeqCst);
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .layer(
            middlewares::timeout::TimeoutLayer::new(Duration::from_millis(100))
                .honor_client_header(true),
        )
        .service(Svc(backend.clone()));
    for _ in 0..10 {
        let res = svc.ready().await.unwrap().call(shortened()).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    let m = layer.handle().metrics(DEFAULT_KEY).unwrap();
    assert_eq!((m.state, m.calls), (State::Closed, 0), "{m:?}");
    // The server's own deadline, seen from outside, still counts.
    for _ in 0..10 {
        assert_eq!(status(&mut svc).await, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(layer.handle().state(DEFAULT_KEY), Some(State::Open));
}
