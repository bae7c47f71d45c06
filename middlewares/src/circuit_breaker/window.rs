//! Sliding windows of call outcomes: the last N calls, or the last N seconds.

use std::time::Duration;

/// How much recent history the breaker judges the failure rate over.
///
/// The default is `Window::Count(20)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The outcomes of the last `n` calls (`1..=1_000_000`).
    Count(u32),
    /// The outcomes of the calls completed in the last `d`, kept in one bucket per second. `d` is
    /// rounded up to whole seconds (`1s..=1h`).
    Time(Duration),
}

impl Default for Window {
    fn default() -> Self {
        Window::Count(20)
    }
}

/// The largest count window accepted.
pub(crate) const MAX_COUNT: u32 = 1_000_000;
/// The longest time window accepted, in seconds.
pub(crate) const MAX_SECS: u64 = 3_600;

impl Window {
    /// The window length in whole seconds (rounded up) of a time window.
    pub(crate) fn secs(d: Duration) -> u64 {
        crate::rejection::ceil_secs(d)
    }
}

/// Aggregate counts over a window (or a bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Totals {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failed);
        self.slow += u32::from(slow);
    }

    fn sub(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// The recorded outcomes, with running totals so a rate costs no scan.
#[derive(Debug)]
pub(crate) enum Counts {
    /// A ring of the last `n` outcomes, one byte each (`FAILED | SLOW` bits).
    Count {
        slots: Box<[u8]>,
        next: usize,
        len: usize,
        totals: Totals,
    },
    /// One bucket per second; `head` is the second (since the breaker's origin) of the newest
    /// bucket.
    Time {
        buckets: Box<[Totals]>,
        head: u64,
        totals: Totals,
    },
}

impl Counts {
    /// An empty window of the given shape.
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => Counts::Count {
                slots: vec![0; n.max(1) as usize].into_boxed_slice(),
                next: 0,
                len: 0,
                totals: Totals::default(),
            },
            Window::Time(d) => Counts::Time {
                buckets: vec![Totals::default(); Window::secs(d).max(1) as usize]
                    .into_boxed_slice(),
                head: 0,
                totals: Totals::default(),
            },
        }
    }

    /// The fewest calls a full window can hold: the minimum-calls setting is capped by this for
    /// count windows (a window of 5 can never see 10 calls). Time windows have no cap.
    pub(crate) fn capacity(&self) -> u32 {
        match self {
            Counts::Count { slots, .. } => slots.len() as u32,
            Counts::Time { .. } => u32::MAX,
        }
    }

    /// Whether this is a full count window of successes (no failure, no slow call): pushing one
    /// more success then changes no count. Always `false` for a time window, where every call
    /// counts in its second's bucket.
    pub(crate) fn is_full_of_successes(&self) -> bool {
        match self {
            Counts::Count {
                slots, len, totals, ..
            } => *len == slots.len() && totals.failures == 0 && totals.slow == 0,
            Counts::Time { .. } => false,
        }
    }

    /// Records one outcome that completed at second `sec`.
    pub(crate) fn push(&mut self, sec: u64, failed: bool, slow: bool) {
        match self {
            Counts::Count {
                slots,
                next,
                len,
                totals,
            } => {
                if *len == slots.len() {
                    let old = slots[*next];
                    totals.sub(Totals {
                        calls: 1,
                        failures: u32::from(old & FAILED != 0),
                        slow: u32::from(old & SLOW != 0),
                    });
                } else {
                    *len += 1;
                }
                slots[*next] = (if failed { FAILED } else { 0 }) | (if slow { SLOW } else { 0 });
                totals.add(failed, slow);
                *next += 1;
                if *next == slots.len() {
                    *next = 0;
                }
            }
            Counts::Time { .. } => {
                self.advance(sec);
                if let Counts::Time {
                    buckets,
                    head,
                    totals,
                } = self
                {
                    // A completion stamped before the head (a stale `now`) lands in the newest
                    // bucket rather than being lost.
                    let idx = (*head % buckets.len() as u64) as usize;
                    buckets[idx].add(failed, slow);
                    totals.add(failed, slow);
                }
            }
        }
    }

    /// The totals of the window as seen at second `sec` (time windows forget older buckets).
    pub(crate) fn totals(&mut self, sec: u64) -> Totals {
        self.advance(sec);
        match self {
            Counts::Count { totals, .. } | Counts::Time { totals, .. } => *totals,
        }
    }

    /// Forgets every outcome.
    pub(crate) fn clear(&mut self) {
        match self {
            Counts::Count {
                slots,
                next,
                len,
                totals,
            } => {
                slots.fill(0);
                *next = 0;
                *len = 0;
                *totals = Totals::default();
            }
            Counts::Time {
                buckets, totals, ..
            } => {
                buckets.fill(Totals::default());
                *totals = Totals::default();
            }
        }
    }

    /// Moves a time window's head to `sec`, emptying the buckets that fell out of it.
    fn advance(&mut self, sec: u64) {
        if let Counts::Time {
            buckets,
            head,
            totals,
        } = self
        {
            if sec <= *head {
                return;
            }
            let n = buckets.len() as u64;
            // Past a full turn every bucket is stale: clear each once, not once per second.
            let steps = (sec - *head).min(n);
            for i in 1..=steps {
                let idx = ((*head + i) % n) as usize;
                totals.sub(buckets[idx]);
                buckets[idx] = Totals::default();
            }
            *head = sec;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_evicts_oldest() {
        let mut w = Counts::new(Window::Count(3));
        w.push(0, true, false);
        w.push(0, true, true);
        w.push(0, false, false);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        w.push(0, false, false); // evicts the first failure
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.push(0, false, false); // evicts the slow failure
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(0), Totals::default());
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let mut w = Counts::new(Window::Time(Duration::from_secs(3)));
        w.push(0, true, false);
        w.push(1, true, false);
        w.push(2, false, false);
        assert_eq!(w.totals(2).calls, 3);
        assert_eq!(w.totals(3).calls, 2, "second 0 left the window");
        assert_eq!(w.totals(3).failures, 1);
        assert_eq!(w.totals(4).calls, 1);
        assert_eq!(w.totals(1_000).calls, 0, "a long jump clears everything");
        w.push(1_000, true, true);
        assert_eq!(
            w.totals(1_000),
            Totals {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
        // A stale stamp lands in the newest bucket.
        w.push(10, false, false);
        assert_eq!(w.totals(1_000).calls, 2);
    }

    #[test]
    fn time_window_rounds_up_to_seconds() {
        assert_eq!(Window::secs(Duration::from_millis(1_500)), 2);
        assert_eq!(Window::secs(Duration::from_secs(2)), 2);
        assert_eq!(Counts::new(Window::Count(5)).capacity(), 5);
    }
}
