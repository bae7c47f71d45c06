//! A retry budget: retries may not exceed a ratio of recent requests plus a small floor.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{Clock, TimeSource};

use super::error::ConfigError;

/// Number of buckets the window is split into.
const BUCKETS: usize = 10;
/// Fixed-point unit: one retry costs this many milli-tokens, so ratios keep three decimals.
const UNIT: i64 = 1_000;

/// A retry budget shared by every clone of a service: over the last `window`, retries may not
/// exceed `ratio` × requests deposited plus `min_per_sec` × window.
///
/// This is the Finagle/linkerd `RetryBudget` model. Each original request calls
/// [`Budget::deposit`] (worth `ratio` of a retry); each retry must succeed at
/// [`Budget::try_withdraw`] (worth one retry). With `ratio = 0.1` and `min_per_sec = 0`, ten
/// requests pay for one retry. Deposits and withdrawals are kept in 10 buckets of `window / 10`
/// each, so an entry counts for between 9/10 of the window and the whole window.
///
/// Accounting is exact integer arithmetic in thousandths of a retry, so the number of allowed
/// retries is computable: `n` sequential deposits allow `floor(n × round(ratio × 1000) / 1000)`
/// withdrawals plus the reserve `floor(min_per_sec × window_secs)`.
///
/// The budget reads the CPU's counter, or tokio's clock when that is paused where the budget
/// is built, so it follows a paused test clock (see [`TimeSource`]). The `_at` methods take a
/// tokio instant instead, as does a tower retry inside layers of this crate that already read
/// tokio's clock: on a running clock the two agree to the counter's drift (with
/// [`TimeSource::Counter`] chosen on a paused clock they do not). tower's `TpsBudget` reads
/// tokio's clock, sits behind tower's `retry` feature that this crate does not depend on, and
/// locks a mutex on every deposit; this one is a couple of atomics per call and locks only when
/// a bucket rolls over, at most once per bucket width.
///
/// Under concurrency a withdrawal reserves its token first and gives it back when the balance
/// went negative, so the budget is never overdrawn; it may refuse spuriously while another
/// caller's failed reservation is in flight.
pub struct Budget {
    /// The clock and the timeline every time below is on (nanoseconds since the budget was
    /// built).
    clock: Clock,
    bucket_nanos: u64,
    deposit_amount: i64,
    reserve: i64,
    /// Bucket number (since the start of the timeline) that `current` accumulates.
    epoch: AtomicU64,
    /// When bucket `epoch` ends, on the timeline: until then a deposit or a withdrawal needs no
    /// roll, which one comparison tells without the division of [`epoch_of`](Self::epoch_of).
    roll_at: AtomicU64,
    /// Net deposits minus withdrawals of the current bucket.
    current: AtomicI64,
    /// Committed past buckets, indexed by `epoch % BUCKETS`.
    buckets: [AtomicI64; BUCKETS],
    /// Serialises bucket roll-over only.
    rotate: Mutex<()>,
    ratio: f32,
    min_per_sec: u32,
    window: Duration,
}

impl Budget {
    /// Default ratio of retries to requests: 0.2.
    pub const DEFAULT_RATIO: f32 = 0.2;
    /// Default floor: 10 retries per second (averaged over the window).
    pub const DEFAULT_MIN_PER_SEC: u32 = 10;
    /// Default window: 10 s.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

    /// A budget allowing `ratio` retries per deposited request plus `min_per_sec` retries per
    /// second, over a sliding `window`.
    ///
    /// # Errors
    /// When `ratio` is not a number in `[0, 1000]` or `window` is outside `[1 s, 60 s]`.
    pub fn new(ratio: f32, min_per_sec: u32, window: Duration) -> Result<Self, ConfigError> {
        Self::with_clock(ratio, min_per_sec, window, TimeSource::Auto)
    }

    /// [`Budget::new`] reading `clock`.
    ///
    /// # Errors
    /// As [`Budget::new`].
    pub fn with_clock(
        ratio: f32,
        min_per_sec: u32,
        window: Duration,
        clock: TimeSource,
    ) -> Result<Self, ConfigError> {
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(ConfigError::new(
                "retry.budget_ratio",
                "a number between 0 and 1000",
                ratio,
            ));
        }
        if window < Duration::from_secs(1) || window > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "retry.budget_window",
                "between 1s and 60s",
                window,
            ));
        }
        Ok(Self::new_unchecked(ratio, min_per_sec, window, clock))
    }

    /// Builds a budget reading `clock` from settings already checked by [`Budget::new`].
    fn new_unchecked(ratio: f32, min_per_sec: u32, window: Duration, clock: TimeSource) -> Self {
        let bucket_nanos = u64::try_from((window / BUCKETS as u32).as_nanos()).unwrap_or(u64::MAX);
        // Float-to-int `as` saturates; both values are bounded by the checks in `new` anyway.
        let deposit_amount = (f64::from(ratio) * UNIT as f64).round() as i64;
        let reserve =
            ((f64::from(min_per_sec) * window.as_secs_f64()).floor() as i64).saturating_mul(UNIT);
        Budget {
            clock: Clock::new(clock),
            bucket_nanos,
            deposit_amount,
            reserve,
            epoch: AtomicU64::new(0),
            roll_at: AtomicU64::new(bucket_nanos),
            current: AtomicI64::new(0),
            buckets: std::array::from_fn(|_| AtomicI64::new(0)),
            rotate: Mutex::new(()),
            ratio,
            min_per_sec,
            window,
        }
    }

    /// The clock the budget reads: [`TimeSource::Tokio`] or [`TimeSource::Counter`] (what
    /// [`Auto`](TimeSource::Auto) resolved to when the budget was built).
    pub fn clock(&self) -> TimeSource {
        self.clock.kind()
    }

    /// The ratio of retries to deposited requests.
    pub fn ratio(&self) -> f32 {
        self.ratio
    }

    /// The floor of retries per second, averaged over the window.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// The sliding window deposits and withdrawals count for.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records one original request (not a retry). Reads the clock once.
    pub fn deposit(&self) {
        self.deposit_nanos(self.clock.now_nanos());
    }

    /// Records one original request made at `now` (for callers that already read the clock).
    #[inline]
    pub fn deposit_at(&self, now: Instant) {
        self.deposit_nanos(self.clock.nanos(now));
    }

    /// A tokio instant on the budget's timeline.
    #[inline]
    pub(crate) fn nanos(&self, now: Instant) -> u64 {
        self.clock.nanos(now)
    }

    /// Now on the budget's timeline when it reads the CPU's counter; `None` on tokio's clock.
    #[inline]
    pub(crate) fn counter_nanos(&self) -> Option<u64> {
        self.clock.counter_nanos()
    }

    /// Records one original request made at `now` on the budget's timeline.
    #[inline]
    pub(crate) fn deposit_nanos(&self, now: u64) {
        if self.deposit_amount == 0 {
            return;
        }
        self.roll(now);
        self.current
            .fetch_add(self.deposit_amount, Ordering::AcqRel);
    }

    /// Takes one retry from the budget; `false` (nothing taken) when the budget is empty and the
    /// caller must not retry. Reads the clock once.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_nanos(self.clock.now_nanos())
    }

    /// [`Budget::try_withdraw`] at `now`.
    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        self.try_withdraw_nanos(self.clock.nanos(now))
    }

    fn try_withdraw_nanos(&self, now: u64) -> bool {
        self.roll(now);
        let before = self.current.fetch_sub(UNIT, Ordering::AcqRel);
        let after = before
            .saturating_sub(UNIT)
            .saturating_add(self.committed())
            .saturating_add(self.reserve);
        if after >= 0 {
            true
        } else {
            self.current.fetch_add(UNIT, Ordering::AcqRel);
            false
        }
    }

    /// How many retries the budget would allow right now.
    pub fn available(&self) -> u64 {
        self.available_nanos(self.clock.now_nanos())
    }

    /// [`Budget::available`] at `now`.
    pub fn available_at(&self, now: Instant) -> u64 {
        self.available_nanos(self.clock.nanos(now))
    }

    fn available_nanos(&self, now: u64) -> u64 {
        self.roll(now);
        let balance = self
            .current
            .load(Ordering::Acquire)
            .saturating_add(self.committed())
            .saturating_add(self.reserve);
        u64::try_from(balance / UNIT).unwrap_or(0)
    }

    fn committed(&self) -> i64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Acquire))
            .fold(0, i64::saturating_add)
    }

    fn epoch_of(&self, now: u64) -> u64 {
        now / self.bucket_nanos.max(1)
    }

    /// Moves `current` into its bucket and clears expired buckets when `now` is in a later bucket.
    #[inline]
    fn roll(&self, now: u64) {
        // Fast path: `now` is still inside the current bucket. (A reader racing a roll may see
        // the old end and skip it: off by one bucket, like the deposits below.)
        if now < self.roll_at.load(Ordering::Acquire) {
            return;
        }
        self.roll_slow(now);
    }

    #[cold]
    fn roll_slow(&self, now: u64) {
        let now_epoch = self.epoch_of(now);
        if self.epoch.load(Ordering::Acquire) >= now_epoch {
            return;
        }
        let _guard = self.rotate.lock().unwrap_or_else(PoisonError::into_inner);
        let cur = self.epoch.load(Ordering::Acquire);
        if cur >= now_epoch {
            return;
        }
        // A concurrent deposit that read the old epoch may land in the new bucket: off by one
        // bucket, which is within the budget's precision.
        let committed = self.current.swap(0, Ordering::AcqRel);
        self.buckets[(cur % BUCKETS as u64) as usize].store(committed, Ordering::Release);
        // Buckets for the epochs skipped over (and the one `now` reuses) hold entries older than
        // the window.
        let gap = (now_epoch - cur).min(BUCKETS as u64);
        for i in 1..=gap {
            self.buckets[((cur + i) % BUCKETS as u64) as usize].store(0, Ordering::Release);
        }
        self.roll_at.store(
            now_epoch
                .saturating_add(1)
                .saturating_mul(self.bucket_nanos.max(1)),
            Ordering::Release,
        );
        self.epoch.store(now_epoch, Ordering::Release);
    }
}

impl Default for Budget {
    /// ratio 0.2, a floor of 10 retries per second, 10 s window.
    fn default() -> Self {
        Self::new_unchecked(
            Self::DEFAULT_RATIO,
            Self::DEFAULT_MIN_PER_SEC,
            Self::DEFAULT_WINDOW,
            TimeSource::Auto,
        )
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("ratio", &self.ratio)
            .field("min_per_sec", &self.min_per_sec)
            .field("window", &self.window)
            .field("current", &self.current.load(Ordering::Relaxed))
            .field("committed", &self.committed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn budget(ratio: f32, min: u32, window_secs: u64) -> Budget {
        Budget::new(ratio, min, Duration::from_secs(window_secs)).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn empty_budget_refuses() {
        let b = budget(0.5, 0, 1);
        assert!(!b.try_withdraw());
        assert_eq!(b.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_is_exact() {
        let b = budget(0.1, 0, 10);
        for _ in 0..9 {
            b.deposit();
        }
        assert!(!b.try_withdraw(), "9 deposits at 0.1 are 0.9 retries");
        b.deposit();
        assert_eq!(b.available(), 1);
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        // A refused withdrawal takes nothing.
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_above_one() {
        let b = budget(2.0, 0, 10);
        b.deposit();
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ratio_uses_reserve_only() {
        let b = budget(0.0, 2, 1);
        for _ in 0..100 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_refills_as_withdrawals_expire() {
        let b = budget(0.0, 1, 2); // reserve: 2 retries per 2 s window
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        advance(Duration::from_millis(1_900)).await;
        assert!(!b.try_withdraw(), "still inside the window");
        advance(Duration::from_millis(200)).await;
        assert!(b.try_withdraw(), "the first withdrawals expired");
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = budget(1.0, 0, 1);
        b.deposit();
        advance(Duration::from_millis(850)).await;
        assert_eq!(
            b.available(),
            1,
            "a deposit counts for at least 9/10 of the window"
        );
        advance(Duration::from_millis(200)).await;
        assert_eq!(b.available(), 0, "and never longer than the window");
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_slide() {
        let b = budget(0.5, 0, 1);
        b.deposit();
        advance(Duration::from_millis(300)).await;
        b.deposit();
        advance(Duration::from_millis(750)).await;
        // The first deposit (bucket 0) expired at 1.0 s; the second (bucket 3) is still in.
        b.deposit();
        assert!(b.try_withdraw(), "second and third deposits make one retry");
        assert!(!b.try_withdraw());
        advance(Duration::from_secs(30)).await;
        assert_eq!(b.available(), 0);
        b.deposit();
        b.deposit();
        assert!(b.try_withdraw(), "a long idle gap clears every bucket");
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let e = Budget::new(-1.0, 0, Duration::from_secs(10)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "retry.budget_ratio must be a number between 0 and 1000, got -1.0"
        );
        let e = Budget::new(f32::NAN, 0, Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.field(), "retry.budget_ratio");
        let e = Budget::new(0.2, 0, Duration::from_millis(500)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "retry.budget_window must be between 1s and 60s, got 500ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_tokio_on_a_paused_clock_unless_told_otherwise() {
        assert_eq!(Budget::default().clock(), TimeSource::Tokio);
        let counter =
            Budget::with_clock(0.5, 0, Duration::from_secs(1), TimeSource::Counter).unwrap();
        assert_eq!(counter.clock(), TimeSource::Counter);
        counter.deposit();
        counter.deposit();
        // A paused hour is nothing to the counter: the deposits have not expired.
        advance(Duration::from_secs(3_600)).await;
        assert_eq!(counter.available(), 1);
    }

    #[test]
    fn reads_the_counter_outside_a_paused_runtime() {
        assert_eq!(Budget::default().clock(), TimeSource::Counter);
    }

    #[test]
    fn default_reserve_is_min_per_sec_times_window() {
        let d = Budget::default();
        assert_eq!(d.available_nanos(0), 100);
    }
}
