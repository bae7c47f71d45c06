//! Whether Redis is worth asking: after a failed call the store stops calling it for a back-off
//! (doubling from the minimum to the maximum while probes keep failing), then lets one request
//! probe; the first success brings it back. Requests in between get the failure policy at once,
//! so a Redis that stays down costs no request a wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How the next call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Redis is up: call it.
    Call,
    /// Redis is down and its back-off is over: this request probes it.
    Probe,
    /// Redis is down: do not call it, apply the failure policy; `retry_in` is the back-off left.
    Skip { retry_in: Duration },
}

/// The transition a call's outcome caused, for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    None,
    /// Up → down.
    WentDown,
    /// A probe failed: still down, back-off doubled.
    StillDown,
    /// Down → up.
    Recovered,
}

/// The back-off state. Times are nanoseconds since `epoch`; `down_until == 0` means up.
#[derive(Debug)]
pub(super) struct Health {
    epoch: Instant,
    down_until: AtomicU64,
    backoff: AtomicU64,
    probing: AtomicBool,
    min: u64,
    max: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Health {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        let min = nanos(min).max(1);
        Health {
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            backoff: AtomicU64::new(min),
            probing: AtomicBool::new(false),
            min,
            max: nanos(max).max(min),
        }
    }

    fn at(&self, now: Instant) -> u64 {
        // Shifted by 1 so that no instant is 0, which means "up".
        nanos(now.saturating_duration_since(self.epoch)).saturating_add(1)
    }

    /// Whether Redis is currently taken as down.
    pub(super) fn is_down(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) != 0
    }

    /// Whether a request at `now` may call Redis.
    pub(super) fn gate(&self, now: Instant) -> Gate {
        let until = self.down_until.load(Ordering::Relaxed);
        if until == 0 {
            return Gate::Call;
        }
        let at = self.at(now);
        if at < until {
            return Gate::Skip {
                retry_in: Duration::from_nanos(until - at),
            };
        }
        // One probe at a time; the others keep skipping until it answers.
        if self
            .probing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Gate::Probe
        } else {
            Gate::Skip {
                retry_in: Duration::ZERO,
            }
        }
    }

    /// A call let through by `gate` answered.
    pub(super) fn succeeded(&self, gate: Gate) -> Transition {
        if gate == Gate::Probe || self.is_down() {
            self.backoff.store(self.min, Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            if self.down_until.swap(0, Ordering::AcqRel) != 0 {
                return Transition::Recovered;
            }
        }
        Transition::None
    }

    /// A call let through by `gate` failed (error or timeout) at `now`.
    pub(super) fn failed(&self, gate: Gate, now: Instant) -> Transition {
        let at = self.at(now);
        if gate == Gate::Probe {
            let backoff = self
                .backoff
                .load(Ordering::Relaxed)
                .saturating_mul(2)
                .min(self.max);
            self.backoff.store(backoff, Ordering::Relaxed);
            self.down_until
                .store(at.saturating_add(backoff), Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            return Transition::StillDown;
        }
        // The first failure of calls in flight when Redis went takes it down; the others find
        // it down already.
        let until = at.saturating_add(self.min);
        match self
            .down_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => {
                self.backoff.store(self.min, Ordering::Relaxed);
                Transition::WentDown
            }
            Err(_) => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn down_backs_off_probes_once_and_recovers() {
        let h = Health::new(100 * MS, 400 * MS);
        let t0 = Instant::now();
        assert_eq!(h.gate(t0), Gate::Call);
        assert_eq!(h.failed(Gate::Call, t0), Transition::WentDown);
        // A second call in flight failing changes nothing.
        assert_eq!(h.failed(Gate::Call, t0), Transition::None);
        assert_eq!(h.gate(t0 + 40 * MS), Gate::Skip { retry_in: 60 * MS });
        // Back-off over: one probe, the others skip meanwhile.
        assert_eq!(h.gate(t0 + 100 * MS), Gate::Probe);
        assert!(matches!(h.gate(t0 + 100 * MS), Gate::Skip { .. }));
        // The probe fails: 200 ms, then 400 ms (the max), then 400 ms.
        assert_eq!(h.failed(Gate::Probe, t0 + 100 * MS), Transition::StillDown);
        assert!(matches!(h.gate(t0 + 299 * MS), Gate::Skip { .. }));
        assert_eq!(h.gate(t0 + 300 * MS), Gate::Probe);
        h.failed(Gate::Probe, t0 + 300 * MS);
        assert_eq!(h.gate(t0 + 700 * MS), Gate::Probe);
        h.failed(Gate::Probe, t0 + 700 * MS);
        assert!(matches!(h.gate(t0 + 1099 * MS), Gate::Skip { .. }));
        assert_eq!(h.gate(t0 + 1100 * MS), Gate::Probe);
        assert_eq!(h.succeeded(Gate::Probe), Transition::Recovered);
        assert_eq!(h.gate(t0 + 1100 * MS), Gate::Call);
        // Down again: the back-off starts from the minimum.
        h.failed(Gate::Call, t0 + 2000 * MS);
        assert_eq!(h.gate(t0 + 2100 * MS), Gate::Probe);
    }
}
