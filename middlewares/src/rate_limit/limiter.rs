//! The keyed GCRA limiter: atomic buckets for the global/unknown/overflow keys and a sharded,
//! bounded table for per-key buckets. No tower, no Pingora: time comes in as an argument, in
//! nanoseconds on the layer's timeline (see `clock`).

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::gcra::{Gcra, Verdict};
use super::KeyValue;

/// Shards of the key table: enough to keep lock contention low on a few cores.
const SHARDS: usize = 16;
/// Minimum gap between two idle sweeps of one full shard, so a flood of new keys cannot make
/// every request scan the shard.
const SWEEP_GAP_NS: u64 = 100_000_000;

/// An atomic TAT on its own cache line, so CAS traffic does not evict the read-only
/// configuration next to it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Bucket(AtomicU64);

/// Byte keys longer than this are stored as a 128-bit digest, so a key never takes more than
/// about a hundred bytes of table memory however long the header value (a JWT, say) is.
const MAX_STORED_KEY: usize = 64;

/// A key as looked up (borrowed) ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Ip(IpAddr),
    Bytes(&'a [u8]),
    Digest(u64, u64),
}

/// ... and as stored.
#[derive(Debug)]
enum StoredKey {
    Ip(IpAddr),
    Bytes(Box<[u8]>),
    Digest(u64, u64),
}

impl StoredKey {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            StoredKey::Ip(ip) => KeyRef::Ip(*ip),
            StoredKey::Bytes(b) => KeyRef::Bytes(b),
            StoredKey::Digest(a, b) => KeyRef::Digest(*a, *b),
        }
    }
}

#[derive(Debug)]
struct Slot {
    key: StoredKey,
    tat: u64,
}

#[derive(Debug, Default)]
struct Shard {
    table: HashTable<Slot>,
    /// Do not sweep before this time (ns): the earliest TAT seen since the last sweep, and at
    /// least [`SWEEP_GAP_NS`] after it.
    next_sweep: u64,
}

impl Shard {
    fn len(&self) -> usize {
        self.table.len()
    }

    /// Drops idle keys (bucket full again, TAT ≤ now): losing them loses nothing, a missing key
    /// is a full bucket.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.len();
        let mut earliest = u64::MAX;
        self.table.retain(|slot| {
            let busy = slot.tat > now;
            if busy {
                earliest = earliest.min(slot.tat);
            }
            busy
        });
        self.next_sweep = earliest.max(now.saturating_add(SWEEP_GAP_NS));
        before - self.len()
    }
}

/// Counters, read with [`Limiter::stats`].
#[derive(Debug, Default)]
struct Counters {
    delayed: AtomicU64,
    rejected: AtomicU64,
    overflowed: AtomicU64,
}

/// A snapshot of the limiter's counters, from
/// [`RateLimitLayer::stats`](super::RateLimitLayer::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Requests delayed in queue mode (in dry-run mode: that would have been delayed).
    pub delayed: u64,
    /// Requests rejected (in dry-run mode: that would have been rejected).
    pub rejected: u64,
    /// Requests of new keys counted in the shared overflow bucket because the key table was full.
    pub overflowed: u64,
    /// Keys currently held in the table.
    pub keys: usize,
}

/// The keyed limiter.
#[derive(Debug)]
pub(super) struct Limiter {
    gcra: Gcra,
    global: Bucket,
    unknown: Bucket,
    overflow: Bucket,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: DefaultHashBuilder,
    /// Second seed for digests of long keys.
    digest: DefaultHashBuilder,
    counters: Counters,
}

impl Limiter {
    pub(super) fn new(gcra: Gcra, max_keys: usize) -> Self {
        let n = SHARDS.min(max_keys).max(1);
        Limiter {
            gcra,
            global: Bucket::default(),
            unknown: Bucket::default(),
            overflow: Bucket::default(),
            shards: (0..n).map(|_| Mutex::default()).collect(),
            // n ≤ max_keys, so every shard holds at least one key and the total stays ≤ max_keys.
            per_shard: max_keys / n,
            hasher: DefaultHashBuilder::default(),
            digest: DefaultHashBuilder::default(),
            counters: Counters::default(),
        }
    }

    pub(super) fn gcra(&self) -> &Gcra {
        &self.gcra
    }

    /// One GCRA step for `key` at `now`.
    pub(super) fn step(&self, key: &KeyValue<'_>, now: u64) -> Verdict {
        let verdict = match key {
            KeyValue::Global => self.gcra.step_atomic(&self.global.0, now),
            KeyValue::Unknown => self.gcra.step_atomic(&self.unknown.0, now),
            KeyValue::Ip(ip) => self.step_keyed(KeyRef::Ip(*ip), now),
            KeyValue::Bytes(bytes) if bytes.len() > MAX_STORED_KEY => {
                // Two independently seeded hashes: collisions need 128 bits of luck.
                let digest = KeyRef::Digest(
                    self.hasher.hash_one(&**bytes),
                    self.digest.hash_one(&**bytes),
                );
                self.step_keyed(digest, now)
            }
            KeyValue::Bytes(bytes) => self.step_keyed(KeyRef::Bytes(bytes), now),
        };
        self.count(verdict)
    }

    /// [`step`](Self::step) for the global key: one compare-exchange on its bucket.
    #[inline]
    pub(super) fn step_global(&self, now: u64) -> Verdict {
        let verdict = self.gcra.step_atomic(&self.global.0, now);
        self.count(verdict)
    }

    /// Counts a delay or a rejection; passes the verdict on.
    #[inline]
    fn count(&self, verdict: Verdict) -> Verdict {
        match verdict {
            Verdict::Allow { .. } => {}
            Verdict::Delay { .. } => {
                self.counters.delayed.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Reject { .. } => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    /// One step on a keyed bucket: one hash picks the shard and the slot in it.
    fn step_keyed(&self, key: KeyRef<'_>, now: u64) -> Verdict {
        let hash = self.hasher.hash_one(key);
        // Bits 32.. pick the shard: hashbrown uses the low bits for the bucket and the top 7
        // for its tags, so the shard choice does not skew either.
        let mut shard = self.lock((hash >> 32) as usize % self.shards.len());
        if let Some(slot) = shard.table.find_mut(hash, |s| s.key.as_ref() == key) {
            let (store, verdict) = self.gcra.step(slot.tat, now);
            if let Some(tat) = store {
                slot.tat = tat;
            }
            return verdict;
        }
        // First request of this key (or first since it went idle and was evicted).
        if shard.len() >= self.per_shard && (now < shard.next_sweep || shard.sweep(now) == 0) {
            drop(shard);
            self.counters.overflowed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "rate limit: key table full; counting a new key in the overflow bucket"
            );
            return self.gcra.step_atomic(&self.overflow.0, now);
        }
        // A fresh bucket is full, so the first request of a key is always admitted.
        let (store, verdict) = self.gcra.step(0, now);
        if let Some(tat) = store {
            shard.next_sweep = shard
                .next_sweep
                .min(tat.max(now.saturating_add(SWEEP_GAP_NS)));
            let key = match key {
                KeyRef::Ip(ip) => StoredKey::Ip(ip),
                KeyRef::Bytes(b) => StoredKey::Bytes(Box::from(b)),
                KeyRef::Digest(a, b) => StoredKey::Digest(a, b),
            };
            let hasher = &self.hasher;
            shard
                .table
                .insert_unique(hash, Slot { key, tat }, |s| hasher.hash_one(s.key.as_ref()));
        }
        verdict
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock cannot leave a TAT half-written; keep going.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops every idle key (bucket full again at `now`); returns how many.
    pub(super) fn evict_idle(&self, now: u64) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).sweep(now))
            .sum()
    }

    /// Keys currently held in the table.
    pub(super) fn key_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub(super) fn stats(&self) -> RateLimitStats {
        RateLimitStats {
            delayed: self.counters.delayed.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
            overflowed: self.counters.overflowed.load(Ordering::Relaxed),
            keys: self.key_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// 1 request per second, burst 1; and a start time on its timeline.
    fn limiter(max_keys: usize) -> (Limiter, u64) {
        (Limiter::new(Gcra::new(SECOND, 1, 0), max_keys), 0)
    }

    #[test]
    fn the_end_of_the_timeline_still_limits() {
        // Where `Clock::nanos` clamps instants centuries away: one admitted, the next rejected.
        let (l, _) = limiter(1);
        let end = (u64::MAX / SECOND / 2) * SECOND + (SECOND - 1);
        assert!(matches!(l.step_global(end), Verdict::Allow { .. }));
        assert!(matches!(l.step_global(end), Verdict::Reject { .. }));
    }

    #[test]
    fn table_never_exceeds_max_keys() {
        for max_keys in [1, 5, 16, 17, 100] {
            let (l, now) = limiter(max_keys);
            for i in 0..(max_keys * 4) {
                l.step(&KeyValue::from(format!("client-{i}")), now);
            }
            assert!(l.key_count() <= max_keys, "{} > {max_keys}", l.key_count());
            assert!(l.stats().overflowed > 0);
        }
    }

    #[test]
    fn full_table_shares_one_overflow_bucket() {
        let (l, now) = limiter(1);
        assert!(matches!(
            l.step(&KeyValue::from("a"), now),
            Verdict::Allow { .. }
        ));
        // "b" and "c" both land in the overflow bucket: the second is rejected.
        assert!(matches!(
            l.step(&KeyValue::from("b"), now),
            Verdict::Allow { .. }
        ));
        assert!(matches!(
            l.step(&KeyValue::from("c"), now),
            Verdict::Reject { .. }
        ));
        assert_eq!(l.key_count(), 1);
    }

    #[test]
    fn idle_keys_are_evicted_to_make_room() {
        let (l, now) = limiter(1);
        assert!(matches!(
            l.step(&KeyValue::from("a"), now),
            Verdict::Allow { .. }
        ));
        // Two seconds later "a" is idle (its bucket refilled), so "b" takes its slot.
        let later = now + 2 * SECOND;
        assert!(matches!(
            l.step(&KeyValue::from("b"), later),
            Verdict::Allow { .. }
        ));
        assert!(matches!(
            l.step(&KeyValue::from("b"), later),
            Verdict::Reject { .. }
        ));
        assert_eq!(l.stats().overflowed, 0);
        assert_eq!(l.key_count(), 1);
    }

    #[test]
    fn long_keys_are_stored_as_digests() {
        let (l, now) = limiter(100);
        let long_a = "a".repeat(10_000);
        let mut long_b = long_a.clone();
        long_b.push('b');
        assert!(matches!(
            l.step(&KeyValue::from(long_a.as_str()), now),
            Verdict::Allow { .. }
        ));
        assert!(matches!(
            l.step(&KeyValue::from(long_b.as_str()), now),
            Verdict::Allow { .. }
        ));
        assert!(matches!(
            l.step(&KeyValue::from(long_a.as_str()), now),
            Verdict::Reject { .. }
        ));
        assert_eq!(l.key_count(), 2);
        let shard = l.shards.iter().find_map(|s| {
            let s = s.lock().unwrap();
            s.table
                .iter()
                .map(|slot| matches!(slot.key, StoredKey::Digest(..)))
                .next()
        });
        assert_eq!(shard, Some(true));
    }

    #[test]
    fn evict_idle_empties_refilled_buckets() {
        // Roomy shards: the seeded hash must not overflow one by chance.
        let (l, now) = limiter(10_000);
        for i in 0..10u8 {
            l.step(&KeyValue::from(IpAddr::from([10, 0, 0, i])), now);
        }
        assert_eq!(l.key_count(), 10);
        assert_eq!(l.evict_idle(now), 0);
        assert_eq!(l.evict_idle(now + SECOND), 10);
        assert_eq!(l.key_count(), 0);
    }
}
