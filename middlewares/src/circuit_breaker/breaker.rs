//! The host-agnostic breaker: one state machine, driven with `Instant`s and outcomes.
//!
//! Nothing here knows tower or Pingora. A host asks [`Breaker::try_acquire`] before a call, gets
//! a [`Permit`] or a [`CircuitOpen`], and settles the permit with the call's [`Outcome`]. A permit
//! dropped unsettled (a cancelled call) gives its half-open slot back without counting.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::error::CircuitOpen;
use super::window::{Counts, Totals, Window};

/// A breaker's state.
///
/// ```text
///            failure or slow-call rate >= threshold (after minimum calls),
///            or N consecutive failures
///   Closed ───────────────────────────────────────────────▶ Open
///     ▲                                                     │  │
///     │ every trial call done,                 wait_in_open │  │
///     │ rates below thresholds                      elapsed │  │
///     │                                                     ▼  │
///     └──────────────────────────────────────────────── HalfOpen
///                rates >= threshold among the trial calls ─────┘ (back to Open, longer wait)
///
///   ForcedOpen / ForcedClosed / Disabled: set and left only through the handle.
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls pass and their outcomes fill the sliding window.
    Closed = 0,
    /// Calls are rejected until the wait in open has passed.
    Open = 1,
    /// A few trial calls pass; their outcomes decide between `Closed` and `Open`.
    HalfOpen = 2,
    /// Every call is rejected until the handle changes the state.
    ForcedOpen = 3,
    /// Every call passes and is counted in the metrics, but the breaker never opens.
    ForcedClosed = 4,
    /// Every call passes and nothing is recorded.
    Disabled = 5,
}

impl State {
    fn from_bits(bits: u64) -> State {
        match bits & 0xff {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::ForcedClosed,
            _ => State::Disabled,
        }
    }

    /// The lowercase name used in logs and error messages (`"half-open"`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::ForcedClosed => "forced-closed",
            State::Disabled => "disabled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one call went, as judged by the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call counts as a success (it may still count as slow).
    Success,
    /// The call counts as a failure.
    Failure,
    /// The call is not counted at all (like a cancelled call: a half-open slot is given back).
    Ignored,
}

impl Outcome {
    /// The default classification: an error or a `5xx` status is a failure, anything else
    /// (including `4xx`, which is the client's fault) a success.
    pub fn classify_default(result: Result<StatusCode, ()>) -> Outcome {
        match result {
            Ok(status) if !status.is_server_error() => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

/// Counts a breaker currently judges by: the sliding window in `Closed`/`ForcedClosed`, the
/// trial calls in `HalfOpen`, nothing otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The state when the metrics were read.
    pub state: State,
    /// Calls recorded in the window.
    pub calls: u32,
    /// Of those, failures.
    pub failures: u32,
    /// Of those, calls at least `slow_call_duration` long (successes and failures).
    pub slow_calls: u32,
    /// `failures / calls` in percent (0 without calls).
    pub failure_rate: f32,
    /// `slow_calls / calls` in percent (0 without calls).
    pub slow_call_rate: f32,
    /// Failures in a row since the last success (closed state only).
    pub consecutive_failures: u32,
    /// Calls rejected by this breaker since it was created.
    pub not_permitted: u64,
}

pub(crate) type Classifier = Arc<dyn Fn(Result<StatusCode, ()>) -> Outcome + Send + Sync>;
pub(crate) type TransitionFn = Arc<dyn Fn(&str, State, State) + Send + Sync>;

/// Validated settings shared by every breaker of one layer.
pub(crate) struct Config {
    pub(crate) failure_rate: u8,
    pub(crate) slow_call_rate: u8,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) minimum_calls: u32,
    pub(crate) window: Window,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) wait_in_open: Duration,
    /// `(multiplier, max)` for waits after repeated opens.
    pub(crate) backoff: Option<(f64, Duration)>,
    /// Fraction (`0.0..=1.0`) by which a wait may be randomly shortened.
    pub(crate) jitter: f64,
    pub(crate) half_open_calls: u32,
    pub(crate) classifier: Option<Classifier>,
    pub(crate) on_transition: Option<TransitionFn>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("failure_rate", &self.failure_rate)
            .field("slow_call_rate", &self.slow_call_rate)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("minimum_calls", &self.minimum_calls)
            .field("window", &self.window)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("wait_in_open", &self.wait_in_open)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("half_open_calls", &self.half_open_calls)
            .field("classifier", &self.classifier.as_ref().map(|_| "custom"))
            .field("on_transition", &self.on_transition.is_some())
            .finish()
    }
}

impl Config {
    /// Whether a permit must know when its call started (slow-call detection).
    fn needs_start(&self) -> bool {
        self.slow_call_duration.is_some()
    }

    /// Whether recording must know when the call ended (slow calls, time buckets).
    fn needs_end(&self) -> bool {
        self.slow_call_duration.is_some() || matches!(self.window, Window::Time(_))
    }

    /// `part / whole >= percent / 100`, in integers.
    fn over(part: u32, whole: u32, percent: u8) -> bool {
        whole > 0 && u64::from(part) * 100 >= u64::from(percent) * u64::from(whole)
    }
}

/// One circuit breaker: a cheap handle (`Clone` shares the same state).
///
/// The closed-state admission is one atomic load (plus the `Arc` clone the permit holds);
/// rejections while open are two atomic loads and an increment. Recording takes a small mutex,
/// see [`Permit::record`], except in the healthy steady state (closed, a full count window of
/// successes): recording one more success changes no count, and costs one atomic load.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

struct Inner {
    key: Arc<str>,
    config: Arc<Config>,
    /// Time zero for `open_until` and the time window's seconds.
    origin: Instant,
    /// `epoch << 8 | state`. Written only under `core`'s lock; read lock-free. The epoch grows on
    /// every transition, so a permit from an earlier state cannot count in the current one.
    status: AtomicU64,
    /// When `Open` ends, in nanoseconds since `origin`.
    open_until: AtomicU64,
    /// Half-open slots taken (in flight + settled), mirrored for lock-free checks.
    probes: AtomicU32,
    not_permitted: AtomicU64,
    /// Whether recording a success that is not slow would change nothing: the breaker is closed
    /// with a full count window of successes and no failure streak. Written under `core`'s lock,
    /// read lock-free by [`Breaker::settle`]. (A success skipped while a failure is being recorded
    /// concurrently reads as if it had been recorded just before that failure: same counts.)
    steady: AtomicBool,
    core: Mutex<Core>,
}

/// The state that changes together on recording.
///
/// Why a mutex and not atomics: recording must evict the oldest slot, add the new outcome,
/// update the totals and maybe transition, all as one step; a lock-free ring would need a CAS loop
/// over several words for the same effect. The critical section is a few counter updates and
/// is not taken on the admission fast path, so an uncontended lock (one CAS in, one store out) is
/// the cheap choice.
struct Core {
    window: Counts,
    consecutive_failures: u32,
    /// Opens since the breaker last closed (drives the growing wait).
    opens: u32,
    probe_in_flight: u32,
    probe_calls: u32,
    probe_failures: u32,
    probe_slow: u32,
}

/// The given time, or the clock read once and kept.
fn clock(now: &mut Option<Instant>) -> Instant {
    *now.get_or_insert_with(Instant::now)
}

fn pack(state: State, epoch: u64) -> u64 {
    (epoch << 8) | state as u64
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("key", &self.inner.key)
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    pub(crate) fn new(key: Arc<str>, config: Arc<Config>) -> Breaker {
        let window = Counts::new(config.window);
        Breaker {
            inner: Arc::new(Inner {
                key,
                config,
                origin: Instant::now(),
                status: AtomicU64::new(pack(State::Closed, 0)),
                open_until: AtomicU64::new(0),
                probes: AtomicU32::new(0),
                not_permitted: AtomicU64::new(0),
                steady: AtomicBool::new(false),
                core: Mutex::new(Core {
                    window,
                    consecutive_failures: 0,
                    opens: 0,
                    probe_in_flight: 0,
                    probe_calls: 0,
                    probe_failures: 0,
                    probe_slow: 0,
                }),
            }),
        }
    }

    /// The key this breaker was registered under.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The current state. `Open` turns into `HalfOpen` lazily, on the first call attempt after
    /// the wait, so this may still say `Open` after the wait has passed.
    pub fn state(&self) -> State {
        State::from_bits(self.inner.status.load(Ordering::Acquire))
    }

    /// Classifies a call result with this breaker's classifier (the layer's
    /// [`classify`](super::CircuitBreakerBuilder::classify) or [`Outcome::classify_default`]).
    /// `Err(())` stands for a call that produced no response (connect error, transport error).
    pub fn classify(&self, result: Result<StatusCode, ()>) -> Outcome {
        match &self.inner.config.classifier {
            Some(classify) => classify(result),
            None => Outcome::classify_default(result),
        }
    }

    /// Whether a call made at `now` would be admitted, without taking a permit or changing the
    /// state: for skipping open backends during peer selection. A `true` can still be followed
    /// by a failing [`try_acquire`](Self::try_acquire) when another call takes the last
    /// half-open slot in between.
    pub fn is_call_permitted(&self, now: Instant) -> bool {
        let inner = &*self.inner;
        match State::from_bits(inner.status.load(Ordering::Acquire)) {
            State::Closed | State::ForcedClosed | State::Disabled => true,
            State::ForcedOpen => false,
            State::Open => self.open_left(now).is_zero(),
            State::HalfOpen => inner.probes.load(Ordering::Acquire) < inner.config.half_open_calls,
        }
    }

    /// Asks to make a call at `now`. On success the returned [`Permit`] must be settled with
    /// [`Permit::record`] when the call ends (or dropped if it was cancelled).
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, CircuitOpen> {
        self.try_acquire_with(|| now)
    }

    /// Like [`try_acquire`](Self::try_acquire) but reads the clock through `clock` only when the
    /// decision or the permit needs it: a closed breaker that does not measure slow calls admits
    /// without reading the clock at all.
    #[inline]
    pub fn try_acquire_with(&self, clock: impl FnOnce() -> Instant) -> Result<Permit, CircuitOpen> {
        let inner = &*self.inner;
        let status = inner.status.load(Ordering::Acquire);
        match State::from_bits(status) {
            state @ (State::Closed | State::ForcedClosed | State::Disabled) => {
                let start = if inner.config.needs_start() {
                    clock()
                } else {
                    inner.origin
                };
                Ok(self.permit(status >> 8, state, start))
            }
            State::ForcedOpen => Err(self.reject(State::ForcedOpen, inner.config.wait_in_open)),
            State::Open => {
                let now = clock();
                let left = self.open_left(now);
                if left.is_zero() {
                    self.acquire_locked(now)
                } else {
                    Err(self.reject(State::Open, left))
                }
            }
            State::HalfOpen => {
                if inner.probes.load(Ordering::Acquire) >= inner.config.half_open_calls {
                    return Err(self.reject(State::HalfOpen, Duration::ZERO));
                }
                self.acquire_locked(clock())
            }
        }
    }

    /// The slow admission path: `Open` past its wait, or `HalfOpen` with a free slot. Decided
    /// under the lock so racing callers take exactly the permitted number of trial calls.
    fn acquire_locked(&self, now: Instant) -> Result<Permit, CircuitOpen> {
        let inner = &*self.inner;
        let mut core = self.lock();
        let status = inner.status.load(Ordering::Acquire);
        let mut transition = None;
        let result = match State::from_bits(status) {
            state @ (State::Closed | State::ForcedClosed | State::Disabled) => {
                Ok(self.permit(status >> 8, state, now))
            }
            State::ForcedOpen => Err(self.reject(State::ForcedOpen, inner.config.wait_in_open)),
            State::Open if !self.open_left(now).is_zero() => {
                Err(self.reject(State::Open, self.open_left(now)))
            }
            state @ (State::Open | State::HalfOpen) => {
                if state == State::Open {
                    transition = self.enter(&mut core, State::HalfOpen);
                }
                if core.probe_in_flight + core.probe_calls < inner.config.half_open_calls {
                    core.probe_in_flight += 1;
                    inner.probes.fetch_add(1, Ordering::AcqRel);
                    let epoch = inner.status.load(Ordering::Acquire) >> 8;
                    Ok(self.permit(epoch, State::HalfOpen, now))
                } else {
                    Err(self.reject(State::HalfOpen, Duration::ZERO))
                }
            }
        };
        drop(core);
        self.notify(transition);
        result
    }

    fn permit(&self, epoch: u64, state: State, start: Instant) -> Permit {
        Permit {
            breaker: self.clone(),
            epoch,
            state,
            start,
            settled: false,
        }
    }

    fn reject(&self, state: State, retry_after: Duration) -> CircuitOpen {
        self.inner.not_permitted.fetch_add(1, Ordering::Relaxed);
        CircuitOpen::new(state, retry_after)
    }

    /// Time left in `Open` as of `now` (zero once the wait is over).
    fn open_left(&self, now: Instant) -> Duration {
        let until = self.inner.open_until.load(Ordering::Acquire);
        let at = self.nanos(now);
        Duration::from_nanos(until.saturating_sub(at))
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.inner.origin).as_nanos())
            .unwrap_or(u64::MAX)
    }

    fn sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.inner.origin).as_secs()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // No code panics while holding the lock, but a poisoned lock must not take the service
        // down with it: the counts are still consistent enough to go on.
        self.inner
            .core
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves to `to` under the lock: clears the window and the trial counts and bumps the epoch.
    /// Returns the transition for [`notify`](Self::notify), to be called after unlocking.
    fn enter(&self, core: &mut Core, to: State) -> Option<(State, State)> {
        let inner = &*self.inner;
        let status = inner.status.load(Ordering::Acquire);
        let from = State::from_bits(status);
        core.window.clear();
        inner.steady.store(false, Ordering::Release);
        core.consecutive_failures = 0;
        core.probe_in_flight = 0;
        core.probe_calls = 0;
        core.probe_failures = 0;
        core.probe_slow = 0;
        inner.probes.store(0, Ordering::Release);
        if to == State::Closed {
            core.opens = 0;
        }
        inner
            .status
            .store(pack(to, (status >> 8).wrapping_add(1)), Ordering::Release);
        (from != to).then_some((from, to))
    }

    /// Moves to `Open` for the (growing, jittered) wait starting at `now`.
    fn enter_open(&self, core: &mut Core, now: Instant) -> Option<(State, State)> {
        let wait = self.open_wait(core.opens);
        core.opens = core.opens.saturating_add(1);
        let until = self
            .nanos(now)
            .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
        // Stored before the state so a reader that sees `Open` sees its deadline.
        self.inner.open_until.store(until, Ordering::Release);
        self.enter(core, State::Open)
    }

    /// The wait for the `opens`-th open in a row (0 = first).
    fn open_wait(&self, opens: u32) -> Duration {
        let config = &*self.inner.config;
        let mut wait = config.wait_in_open;
        if let Some((multiplier, max)) = config.backoff {
            let factor = multiplier.powi(opens.min(1_000) as i32);
            let secs = wait.as_secs_f64() * factor;
            wait = match Duration::try_from_secs_f64(secs) {
                Ok(d) if secs.is_finite() => d.min(max),
                _ => max,
            };
        }
        if config.jitter > 0.0 {
            let cut = config.jitter * rand::random::<f64>();
            wait = wait.mul_f64(1.0 - cut);
        }
        wait
    }

    fn notify(&self, transition: Option<(State, State)>) {
        let Some((from, to)) = transition else {
            return;
        };
        if to == State::Open {
            tracing::warn!(key = %self.inner.key, %from, %to, "circuit breaker opened");
        } else {
            tracing::info!(key = %self.inner.key, %from, %to, "circuit breaker state changed");
        }
        if let Some(callback) = &self.inner.config.on_transition {
            callback(&self.inner.key, from, to);
        }
    }

    /// Settles one call admitted in `epoch`/`state`.
    ///
    /// `now` is when the call ended; `None` when the counts do not need it (no slow calls, count
    /// window), in which case the clock is read only if the breaker opens.
    fn settle(
        &self,
        epoch: u64,
        state: State,
        start: Instant,
        outcome: Outcome,
        mut now: Option<Instant>,
    ) {
        let inner = &*self.inner;
        if state == State::Disabled {
            return;
        }
        if outcome == Outcome::Ignored {
            if state == State::HalfOpen {
                self.release(epoch);
            }
            return;
        }
        // A call admitted before the last transition has nothing to say about the new state.
        if inner.status.load(Ordering::Acquire) >> 8 != epoch {
            return;
        }
        let config = &*inner.config;
        let failed = outcome == Outcome::Failure;
        let slow = config
            .slow_call_duration
            .is_some_and(|d| clock(&mut now).saturating_duration_since(start) >= d);
        // The healthy steady state: one more success changes no count, so no lock.
        if !failed && !slow && inner.steady.load(Ordering::Acquire) {
            return;
        }
        let mut core = self.lock();
        let status = inner.status.load(Ordering::Acquire);
        if status >> 8 != epoch {
            return;
        }
        let transition = match State::from_bits(status) {
            current @ (State::Closed | State::ForcedClosed) => {
                // Only a time window needs the second; a count window ignores it.
                let sec = match config.window {
                    Window::Time(_) => self.sec(clock(&mut now)),
                    Window::Count(_) => 0,
                };
                core.window.push(sec, failed, slow);
                if failed {
                    core.consecutive_failures = core.consecutive_failures.saturating_add(1);
                } else {
                    core.consecutive_failures = 0;
                }
                inner.steady.store(
                    core.consecutive_failures == 0 && core.window.is_full_of_successes(),
                    Ordering::Release,
                );
                if current == State::Closed && self.should_open(&mut core, sec) {
                    self.enter_open(&mut core, clock(&mut now))
                } else {
                    None
                }
            }
            State::HalfOpen => {
                core.probe_in_flight = core.probe_in_flight.saturating_sub(1);
                core.probe_calls += 1;
                core.probe_failures += u32::from(failed);
                core.probe_slow += u32::from(slow);
                let n = config.half_open_calls;
                // Measured against all `n` trial calls, so once the failures alone reach the
                // threshold the answer cannot change: reopen without waiting for the rest.
                let over = Config::over(core.probe_failures, n, config.failure_rate)
                    || (config.slow_call_duration.is_some()
                        && Config::over(core.probe_slow, n, config.slow_call_rate));
                if over {
                    self.enter_open(&mut core, clock(&mut now))
                } else if core.probe_calls >= n {
                    self.enter(&mut core, State::Closed)
                } else {
                    None
                }
            }
            State::Open | State::ForcedOpen | State::Disabled => None,
        };
        drop(core);
        self.notify(transition);
    }

    fn should_open(&self, core: &mut Core, sec: u64) -> bool {
        let config = &*self.inner.config;
        if config
            .consecutive_failures
            .is_some_and(|n| core.consecutive_failures >= n)
        {
            return true;
        }
        let min = config.minimum_calls.min(core.window.capacity());
        let Totals {
            calls,
            failures,
            slow,
        } = core.window.totals(sec);
        calls >= min
            && (Config::over(failures, calls, config.failure_rate)
                || (config.slow_call_duration.is_some()
                    && Config::over(slow, calls, config.slow_call_rate)))
    }

    /// Gives back a half-open slot taken in `epoch` without counting an outcome.
    fn release(&self, epoch: u64) {
        let inner = &*self.inner;
        if inner.status.load(Ordering::Acquire) >> 8 != epoch {
            return;
        }
        let mut core = self.lock();
        if inner.status.load(Ordering::Acquire) >> 8 == epoch && core.probe_in_flight > 0 {
            core.probe_in_flight -= 1;
            inner.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The counts the breaker currently judges by, as of `now`.
    pub fn metrics(&self, now: Instant) -> Metrics {
        let inner = &*self.inner;
        let mut core = self.lock();
        let state = State::from_bits(inner.status.load(Ordering::Acquire));
        let totals = match state {
            State::HalfOpen => Totals {
                calls: core.probe_calls,
                failures: core.probe_failures,
                slow: core.probe_slow,
            },
            _ => core.window.totals(self.sec(now)),
        };
        let consecutive_failures = core.consecutive_failures;
        drop(core);
        let rate = |part: u32| {
            if totals.calls == 0 {
                0.0
            } else {
                part as f32 * 100.0 / totals.calls as f32
            }
        };
        Metrics {
            state,
            calls: totals.calls,
            failures: totals.failures,
            slow_calls: totals.slow,
            failure_rate: rate(totals.failures),
            slow_call_rate: rate(totals.slow),
            consecutive_failures,
            not_permitted: inner.not_permitted.load(Ordering::Relaxed),
        }
    }

    /// Rejects every call until another handle call changes the state.
    pub fn force_open(&self) {
        self.set(State::ForcedOpen);
    }

    /// Admits every call and keeps counting (metrics only), never opening.
    pub fn force_closed(&self) {
        self.set(State::ForcedClosed);
    }

    /// Admits every call and records nothing.
    pub fn disable(&self) {
        self.set(State::Disabled);
    }

    /// Back to `Closed` with an empty window and the first-open wait.
    pub fn reset(&self) {
        self.set(State::Closed);
    }

    fn set(&self, to: State) {
        let mut core = self.lock();
        let transition = self.enter(&mut core, to);
        drop(core);
        self.notify(transition);
    }

    /// Whether only the registry holds this breaker (nobody is using it right now).
    pub(crate) fn is_unused(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// A reference that neither keeps this breaker alive nor counts as a use of it.
    #[cfg(feature = "pingora")]
    pub(crate) fn downgrade(&self) -> WeakBreaker {
        WeakBreaker(Arc::downgrade(&self.inner))
    }
}

/// A [`Breaker`] reference that does not keep it alive, for caches in front of the registry:
/// the registry may still evict the breaker, and the cache then finds it gone.
#[cfg(feature = "pingora")]
pub(crate) struct WeakBreaker(std::sync::Weak<Inner>);

#[cfg(feature = "pingora")]
impl WeakBreaker {
    /// The breaker, unless it was evicted and dropped.
    pub(crate) fn upgrade(&self) -> Option<Breaker> {
        self.0.upgrade().map(|inner| Breaker { inner })
    }
}

/// Permission for one call, from [`Breaker::try_acquire`].
///
/// Settle it with [`record`](Self::record) (or [`finish`](Self::finish)) when the call ends.
/// Dropping it unsettled means the call was cancelled (the caller went away): a half-open slot
/// is given back and nothing is counted. The exception is a call cut off by one of this crate's
/// own deadlines (the timeout layer, retry's per-try timeout): those layers drop the call in a
/// way the permit recognises, and it records a failure, since a backend that hangs is what a
/// breaker is for.
#[must_use = "a permit must be recorded when the call ends"]
pub struct Permit {
    breaker: Breaker,
    epoch: u64,
    state: State,
    start: Instant,
    settled: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.breaker.key())
            .field("state", &self.state)
            .finish()
    }
}

impl Permit {
    /// The breaker this permit belongs to.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Whether this is one of the half-open trial calls.
    pub fn is_trial(&self) -> bool {
        self.state == State::HalfOpen
    }

    /// Records how the call went; `now` is when it ended (used for slow-call detection, the
    /// time window's bucket and the open deadline). May change the breaker's state.
    pub fn record(mut self, outcome: Outcome, now: Instant) {
        self.settled = true;
        self.breaker
            .settle(self.epoch, self.state, self.start, outcome, Some(now));
    }

    /// [`record`](Self::record) at `tokio::time::Instant::now()`, reading the clock only when
    /// the breaker needs it (slow calls, a time window, or a transition to `Open`).
    pub fn finish(mut self, outcome: Outcome) {
        self.settled = true;
        let now = self.breaker.inner.config.needs_end().then(Instant::now);
        self.breaker
            .settle(self.epoch, self.state, self.start, outcome, now);
    }

    /// Classifies `result` with the breaker's classifier and [`finish`](Self::finish)es.
    pub fn finish_with(self, result: Result<StatusCode, ()>) {
        let outcome = self.breaker.classify(result);
        self.finish(outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if crate::cut_off::is_deadline_cut() {
            // A deadline of this crate cut the call off: the backend hung. Counted as a
            // failure, at the time it was cut (so it is a slow call too when slow calls count).
            self.settled = true;
            let now = Instant::now();
            self.breaker.settle(
                self.epoch,
                self.state,
                self.start,
                Outcome::Failure,
                Some(now),
            );
        } else if self.state == State::HalfOpen {
            self.breaker.release(self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut Config)) -> Arc<Config> {
        let mut c = Config {
            failure_rate: 50,
            slow_call_rate: 100,
            slow_call_duration: None,
            minimum_calls: 4,
            window: Window::Count(10),
            consecutive_failures: None,
            wait_in_open: Duration::from_secs(10),
            backoff: None,
            jitter: 0.0,
            half_open_calls: 2,
            classifier: None,
            on_transition: None,
        };
        f(&mut c);
        Arc::new(c)
    }

    fn call(b: &Breaker, now: Instant, outcome: Outcome) -> Result<(), CircuitOpen> {
        b.try_acquire(now)?.record(outcome, now);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn closed_open_half_open_closed() {
        let b = Breaker::new("k".into(), config(|_| {}));
        let t0 = Instant::now();
        for _ in 0..3 {
            call(&b, t0, Outcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::Closed, "below minimum calls");
        call(&b, t0, Outcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
        let err = b.try_acquire(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(err.retry_after(), Duration::from_secs(6));
        assert!(!b.is_call_permitted(t0 + Duration::from_secs(4)));
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.is_call_permitted(t1));
        let p1 = b.try_acquire(t1).unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        let p2 = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_err(), "only two trial calls");
        assert!(!b.is_call_permitted(t1));
        p1.record(Outcome::Success, t1);
        assert_eq!(b.state(), State::HalfOpen);
        p2.record(Outcome::Success, t1);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.metrics(t1).calls, 0, "window reset on close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_of_successes_still_counts_every_failure() {
        // Window 10, at least 4 calls, 50 %: successes past a full window are not recorded
        // (nothing would change), and failures still evict them one by one.
        let b = Breaker::new("k".into(), config(|_| {}));
        let t0 = Instant::now();
        for _ in 0..25 {
            call(&b, t0, Outcome::Success).unwrap();
        }
        let m = b.metrics(t0);
        assert_eq!((m.calls, m.failures), (10, 0));
        for n in 1..5 {
            call(&b, t0, Outcome::Failure).unwrap();
            assert_eq!(b.metrics(t0).failures, n);
            assert_eq!(b.state(), State::Closed, "{n} failures in 10 calls");
        }
        call(&b, t0, Outcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open, "5 failures in 10 calls is 50 %");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_of_fast_successes_still_counts_slow_ones() {
        let b = Breaker::new(
            "k".into(),
            config(|c| {
                c.slow_call_duration = Some(Duration::from_secs(1));
                c.slow_call_rate = 50;
            }),
        );
        let t0 = Instant::now();
        for _ in 0..12 {
            call(&b, t0, Outcome::Success).unwrap();
        }
        // Successes that took 2 s each: slow, so recorded although the window was steady.
        for n in 1..5 {
            b.try_acquire(t0)
                .unwrap()
                .record(Outcome::Success, t0 + Duration::from_secs(2));
            assert_eq!(b.metrics(t0).slow_calls, n);
        }
        assert_eq!(b.state(), State::Closed, "4 slow calls in 10");
        b.try_acquire(t0)
            .unwrap()
            .record(Outcome::Success, t0 + Duration::from_secs(2));
        assert_eq!(b.state(), State::Open, "5 slow calls in 10 is 50 %");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_a_failure_in_a_full_window_ends_the_streak() {
        let b = Breaker::new("k".into(), config(|c| c.consecutive_failures = Some(3)));
        let t0 = Instant::now();
        for _ in 0..10 {
            call(&b, t0, Outcome::Success).unwrap();
        }
        for outcome in [Outcome::Failure, Outcome::Failure, Outcome::Success] {
            call(&b, t0, outcome).unwrap();
        }
        assert_eq!(b.metrics(t0).consecutive_failures, 0);
        call(&b, t0, Outcome::Failure).unwrap();
        call(&b, t0, Outcome::Failure).unwrap();
        assert_eq!(b.state(), State::Closed, "the success broke the streak");
        call(&b, t0, Outcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open, "three failures in a row");
        // A reset from a full window of successes starts an empty one, which records again.
        b.reset();
        for _ in 0..12 {
            call(&b, t0, Outcome::Success).unwrap();
        }
        b.reset();
        call(&b, t0, Outcome::Success).unwrap();
        assert_eq!(b.metrics(t0).calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_permit_does_not_count() {
        let b = Breaker::new("k".into(), config(|c| c.minimum_calls = 1));
        let t0 = Instant::now();
        let old = b.try_acquire(t0).unwrap();
        call(&b, t0, Outcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
        b.reset();
        old.record(Outcome::Failure, t0);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.metrics(t0).calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_and_ignored_trials_release_slots() {
        let b = Breaker::new("k".into(), config(|c| c.minimum_calls = 1));
        let t0 = Instant::now();
        call(&b, t0, Outcome::Failure).unwrap();
        let t1 = t0 + Duration::from_secs(10);
        let p1 = b.try_acquire(t1).unwrap();
        let p2 = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_err());
        drop(p1);
        p2.record(Outcome::Ignored, t1);
        let p3 = b.try_acquire(t1).unwrap();
        let p4 = b.try_acquire(t1).unwrap();
        assert!(p3.is_trial() && p4.is_trial());
        p3.record(Outcome::Success, t1);
        p4.record(Outcome::Success, t1);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_and_resets() {
        let b = Breaker::new(
            "k".into(),
            config(|c| {
                c.minimum_calls = 1;
                c.half_open_calls = 1;
                c.backoff = Some((2.0, Duration::from_secs(30)));
            }),
        );
        let mut t = Instant::now();
        call(&b, t, Outcome::Failure).unwrap();
        for expected in [10, 20, 30, 30] {
            assert_eq!(
                b.try_acquire(t).unwrap_err().retry_after(),
                Duration::from_secs(expected)
            );
            t += Duration::from_secs(expected);
            call(&b, t, Outcome::Failure).unwrap();
        }
        t += Duration::from_secs(30);
        call(&b, t, Outcome::Success).unwrap();
        assert_eq!(b.state(), State::Closed);
        call(&b, t, Outcome::Failure).unwrap();
        assert_eq!(
            b.try_acquire(t).unwrap_err().retry_after(),
            Duration::from_secs(10),
            "closing resets the backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_only_shortens() {
        let b = Breaker::new(
            "k".into(),
            config(|c| {
                c.minimum_calls = 1;
                c.jitter = 0.5;
            }),
        );
        let t = Instant::now();
        for _ in 0..20 {
            b.reset();
            call(&b, t, Outcome::Failure).unwrap();
            let left = b.try_acquire(t).unwrap_err().retry_after();
            assert!(left <= Duration::from_secs(10) && left >= Duration::from_secs(5));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn forced_states() {
        let b = Breaker::new("k".into(), config(|c| c.minimum_calls = 1));
        let t = Instant::now();
        b.force_open();
        assert_eq!(b.try_acquire(t).unwrap_err().state(), State::ForcedOpen);
        b.force_closed();
        for _ in 0..5 {
            call(&b, t, Outcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::ForcedClosed);
        assert_eq!(b.metrics(t).failures, 5);
        b.disable();
        call(&b, t, Outcome::Failure).unwrap();
        assert_eq!(b.metrics(t).calls, 0);
        assert_eq!(b.metrics(t).not_permitted, 1);
        b.reset();
        call(&b, t, Outcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn default_classifier() {
        assert_eq!(Outcome::classify_default(Err(())), Outcome::Failure);
        assert_eq!(
            Outcome::classify_default(Ok(StatusCode::BAD_GATEWAY)),
            Outcome::Failure
        );
        assert_eq!(
            Outcome::classify_default(Ok(StatusCode::NOT_FOUND)),
            Outcome::Success
        );
        assert_eq!(
            Outcome::classify_default(Ok(StatusCode::OK)),
            Outcome::Success
        );
    }
}
