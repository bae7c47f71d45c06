//! The clock the rate limiter and the retry budget read: tokio's, or the CPU's time-stamp
//! counter.
//!
//! Each keeps a timeline of nanoseconds since it was built. Tokio instants (given by a caller,
//! as to [`RateLimitLayer::check`](crate::rate_limit::RateLimitLayer::check), or read by the
//! layers around) are placed on it through the tokio instant read at build time; the counter's
//! reads through the counter value read at the same moment. Both run at the rate of the OS
//! monotonic clock (`quanta` calibrates the counter against it), so the two agree to the
//! counter's drift.

// Only to tell a paused tokio clock from a running one (see `tokio_clock_paused`).
#[allow(clippy::disallowed_types)]
use std::time::Instant as StdInstant;

use tokio::time::Instant;

/// The clock a rate limiter or a retry budget reads
/// ([`RateLimitBuilder::clock`](crate::rate_limit::RateLimitBuilder::clock),
/// [`RetryBuilder::clock`](crate::retry::RetryBuilder::clock)).
///
/// Reading the clock is a large part of what these layers cost per request, and the counter is
/// the cheaper read (figures: the crate's `README.md`, *Figures behind the docs*).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeSource {
    /// [`Tokio`](Self::Tokio) when tokio's clock is paused where the layer is built (as in a
    /// `#[tokio::test(start_paused = true)]`), [`Counter`](Self::Counter) otherwise. The default.
    #[default]
    Auto,
    /// tokio's clock. It follows a paused test clock, and the tower services share its read
    /// with the other layers of this crate in the same stack.
    Tokio,
    /// The CPU's time-stamp counter, through `quanta` (the OS monotonic clock where there is no
    /// usable counter). Cheaper to read, but it does not follow tokio's paused clock. The first
    /// counter clock of a process calibrates the counter against the OS clock, which blocks for
    /// 10–20 ms (at most 200 ms).
    Counter,
}

/// A resolved clock and its timeline.
#[derive(Debug)]
pub(crate) struct Clock {
    /// Start of the timeline, on tokio's clock.
    epoch: Instant,
    /// The counter and its value at `epoch`, for [`TimeSource::Counter`].
    counter: Option<(quanta::Clock, u64)>,
}

impl Clock {
    /// Resolves `choice` ([`TimeSource::Auto`] looks at tokio's clock here and now) and
    /// starts the timeline.
    pub(crate) fn new(choice: TimeSource) -> Self {
        let use_counter = match choice {
            TimeSource::Auto => !tokio_clock_paused(),
            TimeSource::Tokio => false,
            TimeSource::Counter => true,
        };
        let counter = use_counter.then(|| {
            let clock = quanta::Clock::new();
            let epoch = clock.raw();
            (clock, epoch)
        });
        Clock {
            epoch: Instant::now(),
            counter,
        }
    }

    /// [`TimeSource::Tokio`] or [`TimeSource::Counter`]: what `Auto` resolved to.
    #[cfg_attr(not(any(feature = "rate-limit", feature = "retry")), allow(dead_code))]
    pub(crate) fn kind(&self) -> TimeSource {
        match self.counter {
            Some(_) => TimeSource::Counter,
            None => TimeSource::Tokio,
        }
    }

    /// Now on the timeline, from the counter; `None` on tokio's clock (the caller reads it, or
    /// takes the instant the layers around it read).
    #[inline]
    pub(crate) fn counter_nanos(&self) -> Option<u64> {
        let (clock, epoch) = self.counter.as_ref()?;
        Some(clock.delta_as_nanos(*epoch, clock.raw()))
    }

    /// Now on the timeline, from whichever clock this is.
    pub(crate) fn now_nanos(&self) -> u64 {
        self.counter_nanos()
            .unwrap_or_else(|| self.nanos(Instant::now()))
    }

    /// The tokio instant `nanos` into the timeline (for APIs that take an instant).
    #[cfg_attr(not(feature = "obs"), allow(dead_code))]
    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(nanos)
    }

    /// `now` (a tokio instant) on the timeline; instants before the start count as the start.
    #[inline]
    pub(crate) fn nanos(&self, now: Instant) -> u64 {
        // u64 nanoseconds last 584 years. The timeline ends after half of them, so the
        // arithmetic below cannot overflow (cheaper than saturating each step, and than
        // widening to u128) and a bucket's TAT still has room to run ahead of it.
        const MAX_SECS: u64 = u64::MAX / 1_000_000_000 / 2;
        let d = now.saturating_duration_since(self.epoch);
        d.as_secs().min(MAX_SECS) * 1_000_000_000 + u64::from(d.subsec_nanos())
    }
}

/// Whether tokio's clock is paused here: possible only with tokio's `test-util` feature, in
/// the context of a runtime whose clock was paused.
///
/// A paused clock moves only when the test advances it, never while this runs; a running one
/// is the OS monotonic clock, which moves between two reads with a `std` read in between
/// (nanosecond resolution on Linux; where it is coarser, a few more reads).
#[allow(clippy::disallowed_types)] // a `std` read between two tokio reads: see above
fn tokio_clock_paused() -> bool {
    let start = Instant::now();
    (0..16).all(|_| {
        std::hint::black_box(StdInstant::now());
        Instant::now() == start
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn auto_reads_the_counter_outside_a_runtime() {
        assert!(!tokio_clock_paused());
        assert_eq!(Clock::new(TimeSource::Auto).kind(), TimeSource::Counter);
    }

    #[tokio::test]
    async fn auto_reads_the_counter_on_a_running_tokio_clock() {
        assert!(!tokio_clock_paused());
        assert_eq!(Clock::new(TimeSource::Auto).kind(), TimeSource::Counter);
    }

    #[tokio::test(start_paused = true)]
    async fn auto_reads_tokio_on_a_paused_tokio_clock() {
        assert!(tokio_clock_paused());
        let clock = Clock::new(TimeSource::Auto);
        assert_eq!(clock.kind(), TimeSource::Tokio);
        assert_eq!(clock.counter_nanos(), None);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_nanos(), 1_500_000_000);
        // Explicit choices win over the paused clock.
        assert_eq!(Clock::new(TimeSource::Counter).kind(), TimeSource::Counter);
    }

    #[tokio::test(start_paused = true)]
    async fn the_counter_ignores_a_paused_tokio_clock() {
        let clock = Clock::new(TimeSource::Counter);
        let before = clock.now_nanos();
        tokio::time::advance(Duration::from_secs(3_600)).await;
        let after = clock.now_nanos();
        assert!(after >= before, "{after} >= {before}");
        assert!(
            after - before < 1_800_000_000_000,
            "moved {}",
            after - before
        );
        // Explicit tokio instants are still placed on the timeline.
        assert_eq!(
            clock.nanos(Instant::now()),
            3_600_000_000_000,
            "tokio's clock moved by the advance"
        );
    }

    #[test]
    fn the_counter_moves_with_real_time() {
        let clock = Clock::new(TimeSource::Counter);
        let before = clock.now_nanos();
        std::thread::sleep(Duration::from_millis(20));
        let moved = clock.now_nanos() - before;
        assert!(moved >= 15_000_000, "moved {moved} ns in a 20 ms sleep");
    }

    #[test]
    fn instants_centuries_away_neither_overflow_nor_go_back() {
        let clock = Clock::new(TimeSource::Tokio);
        let epoch = clock.epoch;
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(clock.nanos(epoch + Duration::from_nanos(1_500)), 1_500);
        assert_eq!(clock.nanos(epoch - Duration::from_secs(1)), 0);
        let late = clock.nanos(epoch + year * 100);
        let later = clock.nanos(epoch + year * 200);
        // The timeline ends after ~292 years.
        let end = clock.nanos(epoch + year * 300);
        assert!(late < later && later < end, "{late} < {later} < {end}");
        assert_eq!(clock.nanos(epoch + year * 10_000), end);
    }
}
