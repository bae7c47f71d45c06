//! The last few minutes of requests, one slot per second: what `/status` and the status page
//! show (QPS and p95/p99 over the last minute, sparklines). Fixed memory, lock-free.

use std::sync::atomic::{AtomicU64, Ordering};

use super::metrics::BUCKETS;

/// Seconds kept.
pub const SECONDS: usize = 300;

/// One second: its number, the request count per latency bucket (the last one is `+Inf`).
struct Slot {
    second: AtomicU64,
    counts: [AtomicU64; BUCKETS.len() + 1],
}

/// A ring of per-second latency histograms.
pub(crate) struct Recent {
    slots: Box<[Slot]>,
}

/// Requests per second and latency quantiles of one second or a span of seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Requests per second over the span.
    pub qps: f64,
    /// 95th percentile latency in seconds (the upper bound of its bucket), `0` without requests.
    pub p95: f64,
    /// 99th percentile latency in seconds (the upper bound of its bucket), `0` without requests.
    pub p99: f64,
    /// Requests in the span.
    pub requests: u64,
}

impl Recent {
    pub(crate) fn new() -> Self {
        let slots = (0..SECONDS)
            .map(|_| Slot {
                // No second is `u64::MAX`: every slot starts stale.
                second: AtomicU64::new(u64::MAX),
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect();
        Recent { slots }
    }

    /// Counts one request of `latency` seconds ending in second `second`.
    pub(crate) fn record(&self, second: u64, latency: f64) {
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The slot's old second is over: start it again. A request of this second counted
            // by another thread between the exchange and here is lost (a display figure).
            for c in &slot.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        let bucket = BUCKETS
            .iter()
            .position(|upper| latency <= *upper)
            .unwrap_or(BUCKETS.len());
        slot.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The `seconds` seconds ending with `now` (the current second, still filling, included,
    /// so a request is seen as soon as it ended).
    pub(crate) fn summary(&self, now: u64, seconds: u64) -> Summary {
        let mut counts = [0u64; BUCKETS.len() + 1];
        for s in (now + 1).saturating_sub(seconds)..=now {
            self.add_second(s, &mut counts);
        }
        summarize(&counts, seconds)
    }

    /// One [`Summary`] per second for the `seconds` seconds ending before `now`, oldest first.
    pub(crate) fn series(&self, now: u64, seconds: u64) -> Vec<Summary> {
        (now.saturating_sub(seconds)..now)
            .map(|s| {
                let mut counts = [0u64; BUCKETS.len() + 1];
                self.add_second(s, &mut counts);
                summarize(&counts, 1)
            })
            .collect()
    }

    fn add_second(&self, second: u64, counts: &mut [u64; BUCKETS.len() + 1]) {
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        if slot.second.load(Ordering::Acquire) != second {
            return;
        }
        for (sum, c) in counts.iter_mut().zip(&slot.counts) {
            *sum += c.load(Ordering::Relaxed);
        }
    }
}

fn summarize(counts: &[u64; BUCKETS.len() + 1], seconds: u64) -> Summary {
    let requests: u64 = counts.iter().sum();
    let quantile = |q: f64| {
        if requests == 0 {
            return 0.0;
        }
        let rank = (q * requests as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Past the last bound: report the last bound (the histogram cannot say more).
                return BUCKETS[i.min(BUCKETS.len() - 1)];
            }
        }
        BUCKETS[BUCKETS.len() - 1]
    };
    Summary {
        qps: requests as f64 / seconds.max(1) as f64,
        p95: quantile(0.95),
        p99: quantile(0.99),
        requests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_last_seconds_only() {
        let recent = Recent::new();
        for _ in 0..99 {
            recent.record(10, 0.002);
        }
        recent.record(10, 0.8);
        recent.record(3, 20.0);
        let s = recent.summary(10, 5);
        assert_eq!(s.requests, 100);
        assert_eq!(s.qps, 20.0);
        assert_eq!(s.p95, 0.0025);
        assert_eq!(s.p99, 0.0025);
        // A slot reused SECONDS later starts from zero.
        recent.record(10 + SECONDS as u64, 1.0);
        let s = recent.summary(10 + SECONDS as u64, 1);
        assert_eq!((s.requests, s.p99), (1, 1.0));
        assert_eq!(recent.series(11 + SECONDS as u64, 3).len(), 3);
    }
}
