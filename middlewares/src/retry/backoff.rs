//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

use super::error::ConfigError;

/// Exponential backoff with "full jitter".
///
/// Before retry number `attempt` (0 for the first retry) the ceiling is
/// `min(cap, base * 2^attempt)`; with jitter on (the default) the delay is drawn uniformly from
/// `[0, ceiling]` with the thread-local RNG, with jitter off it is the ceiling itself, which
/// makes the schedule deterministic (useful in tests).
///
/// Holds no tower or Pingora types, so the Pingora host can call [`Backoff::delay`] directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: bool,
}

impl Backoff {
    /// Default `base`: 25 ms.
    pub const DEFAULT_BASE: Duration = Duration::from_millis(25);
    /// Default `cap`: 1 s.
    pub const DEFAULT_CAP: Duration = Duration::from_secs(1);

    /// A backoff starting at `base` and never exceeding `cap`, with jitter on.
    ///
    /// # Errors
    /// When `base > cap`.
    pub fn new(base: Duration, cap: Duration) -> Result<Self, ConfigError> {
        if base > cap {
            return Err(ConfigError::new(
                "retry.backoff_base",
                format!("<= retry.backoff_cap ({cap:?})"),
                base,
            ));
        }
        Ok(Backoff {
            base,
            cap,
            jitter: true,
        })
    }

    /// Turns full jitter on (default) or off (`delay` then returns [`Backoff::max_delay`]).
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay of the first retry's ceiling.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay ever returned.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Whether delays are jittered.
    pub fn jitter(&self) -> bool {
        self.jitter
    }

    /// The ceiling `min(cap, base * 2^attempt)` for retry number `attempt` (0-based: pass the
    /// number of retries already made).
    pub fn max_delay(&self, attempt: u32) -> Duration {
        let exp = match 1u32.checked_shl(attempt) {
            Some(factor) => self.base.saturating_mul(factor),
            None => Duration::MAX,
        };
        exp.min(self.cap)
    }

    /// The delay to wait before retry number `attempt` (0-based: pass the number of retries
    /// already made): uniform in `[0, max_delay(attempt)]` with jitter, else `max_delay(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.max_delay(attempt);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        // The cap is a `Duration`, so nanoseconds can exceed u64 only for absurd caps (>584
        // years); saturate rather than fail.
        let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=max))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Self::DEFAULT_BASE,
            cap: Self::DEFAULT_CAP,
            jitter: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_schedule_without_jitter() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
            .unwrap()
            .with_jitter(false);
        let got: Vec<_> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, [10, 20, 40, 80, 100, 100]);
        assert_eq!(b.delay(31), Duration::from_millis(100));
        assert_eq!(b.delay(32), Duration::from_millis(100));
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_stays_within_ceiling() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100)).unwrap();
        for n in 0..8 {
            for _ in 0..200 {
                assert!(b.delay(n) <= b.max_delay(n));
            }
        }
        // 200 draws in [0, 80ms] are not all equal: jitter is on.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| b.delay(3)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn zero_base_never_waits() {
        let b = Backoff::new(Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(40), Duration::ZERO);
    }

    #[test]
    fn base_above_cap_is_rejected() {
        let err = Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.field(), "retry.backoff_base");
        assert_eq!(
            err.to_string(),
            "retry.backoff_base must be <= retry.backoff_cap (1s), got 2s"
        );
    }
}
