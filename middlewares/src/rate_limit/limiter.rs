//! The keyed GCRA limiter: atomic buckets for the global and unknown keys, and a sharded,
//! bounded table for per-key buckets in which a new key replaces the least recently used one
//! when its shard is full. No tower, no Pingora: time comes in as an argument, in nanoseconds
//! on the layer's timeline (see `clock`).

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::gcra::{Gcra, Verdict};
use super::KeyValue;

/// Shards of the key table: enough to keep lock contention low on a few cores.
const SHARDS: usize = 16;
/// How many keys a full shard looks at, from its least recently used end, for an idle one to
/// replace before it evicts the least recently used key whatever its state. Bounds the work a
/// new key does; an idle key further up is found later, or by [`Limiter::evict_idle`].
const IDLE_SCAN: usize = 8;
/// No node: the end of the recency list.
const NIL: u32 = u32::MAX;

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
    fn new(key: KeyRef<'_>) -> Self {
        match key {
            KeyRef::Ip(ip) => StoredKey::Ip(ip),
            KeyRef::Bytes(b) => StoredKey::Bytes(Box::from(b)),
            KeyRef::Digest(a, b) => StoredKey::Digest(a, b),
        }
    }

    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            StoredKey::Ip(ip) => KeyRef::Ip(*ip),
            StoredKey::Bytes(b) => KeyRef::Bytes(b),
            StoredKey::Digest(a, b) => KeyRef::Digest(*a, *b),
        }
    }
}

/// One key's bucket, and its place in the shard's recency list.
#[derive(Debug)]
struct Node {
    key: StoredKey,
    /// The key's hash, kept so the table can grow without hashing keys again.
    hash: u64,
    tat: u64,
    /// Neighbours in the recency list: `newer` towards the most recently used end.
    newer: u32,
    older: u32,
}

/// One shard: the nodes in a dense `Vec` (indices stay small and stable between removals), a
/// hash table of indices into it, and a doubly linked recency list through the nodes.
#[derive(Debug)]
struct Shard {
    table: HashTable<u32>,
    nodes: Vec<Node>,
    /// Most recently used node.
    newest: u32,
    /// Least recently used node: the one a new key replaces when the shard is full.
    oldest: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            table: HashTable::new(),
            nodes: Vec::new(),
            newest: NIL,
            oldest: NIL,
        }
    }
}

impl Shard {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn find(&self, hash: u64, key: KeyRef<'_>) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(hash, |&i| {
                let node = &nodes[i as usize];
                node.hash == hash && node.key.as_ref() == key
            })
            .copied()
    }

    /// Takes node `i` out of the recency list.
    fn unlink(&mut self, i: u32) {
        let Node { newer, older, .. } = self.nodes[i as usize];
        match newer {
            NIL => self.newest = older,
            n => self.nodes[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.nodes[o as usize].newer = newer,
        }
    }

    /// Puts node `i` (not in the list) at the most recently used end.
    fn push_newest(&mut self, i: u32) {
        let old_newest = self.newest;
        let node = &mut self.nodes[i as usize];
        node.newer = NIL;
        node.older = old_newest;
        match old_newest {
            NIL => self.oldest = i,
            n => self.nodes[n as usize].newer = i,
        }
        self.newest = i;
    }

    /// Marks node `i` as just used: a few index writes, nothing when it already is the newest.
    #[inline]
    fn touch(&mut self, i: u32) {
        if self.newest != i {
            self.unlink(i);
            self.push_newest(i);
        }
    }

    /// Adds a key that is not in the table.
    fn insert(&mut self, key: KeyRef<'_>, hash: u64, tat: u64) {
        // `per_shard` ≤ NIL, so a shard never holds more nodes than a u32 indexes below NIL.
        let Ok(i) = u32::try_from(self.nodes.len()) else {
            return;
        };
        self.nodes.push(Node {
            key: StoredKey::new(key),
            hash,
            tat,
            newer: NIL,
            older: NIL,
        });
        let nodes = &self.nodes;
        self.table
            .insert_unique(hash, i, |&j| nodes[j as usize].hash);
        self.push_newest(i);
    }

    /// Gives node `i`'s place to a key that is not in the table.
    fn replace(&mut self, i: u32, key: KeyRef<'_>, hash: u64, tat: u64) {
        self.forget_index(i);
        let node = &mut self.nodes[i as usize];
        node.key = StoredKey::new(key);
        node.hash = hash;
        node.tat = tat;
        let nodes = &self.nodes;
        self.table
            .insert_unique(hash, i, |&j| nodes[j as usize].hash);
        self.touch(i);
    }

    /// Removes the table's entry for node `i` (the node stays).
    fn forget_index(&mut self, i: u32) {
        let hash = self.nodes[i as usize].hash;
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
    }

    /// Removes node `i`; the last node moves into its place.
    fn remove(&mut self, i: u32) {
        self.forget_index(i);
        self.unlink(i);
        let last = (self.nodes.len() - 1) as u32;
        if i != last {
            let moved = &self.nodes[last as usize];
            let (hash, newer, older) = (moved.hash, moved.newer, moved.older);
            if let Some(slot) = self.table.find_mut(hash, |&j| j == last) {
                *slot = i;
            }
            match newer {
                NIL => self.newest = i,
                n => self.nodes[n as usize].older = i,
            }
            match older {
                NIL => self.oldest = i,
                o => self.nodes[o as usize].newer = i,
            }
        }
        self.nodes.swap_remove(i as usize);
    }

    /// The node a new key takes over in a full shard: the least recently used idle one (bucket
    /// full again, TAT ≤ now) among the [`IDLE_SCAN`] least recently used, else the least
    /// recently used. `true` when it is busy (its debt will be forgotten).
    fn victim(&self, now: u64) -> (u32, bool) {
        let mut i = self.oldest;
        for _ in 0..IDLE_SCAN {
            if i == NIL {
                break;
            }
            let node = &self.nodes[i as usize];
            if node.tat <= now {
                return (i, false);
            }
            i = node.newer;
        }
        (self.oldest, true)
    }

    /// Drops idle keys (bucket full again, TAT ≤ now): losing them loses nothing, a missing key
    /// is a full bucket.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.len();
        // From the end: the node that moves into a removed one's place was already kept.
        for i in (0..self.nodes.len()).rev() {
            if self.nodes[i].tat <= now {
                self.remove(i as u32);
            }
        }
        before - self.len()
    }
}

/// Counters, read with [`Limiter::stats`].
#[derive(Debug, Default)]
struct Counters {
    delayed: AtomicU64,
    rejected: AtomicU64,
    evicted_busy: AtomicU64,
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
    /// Keys evicted while their bucket was still in debt, to make room for a new key in a full
    /// table: each such key's next request starts from a full bucket. A steady rise means
    /// [`max_keys`](super::RateLimitBuilder::max_keys) is smaller than the number of clients
    /// active within one refill, or that someone is rotating keys.
    pub evicted_busy: u64,
    /// Keys currently held in the table.
    pub keys: usize,
}

/// The keyed limiter.
#[derive(Debug)]
pub(super) struct Limiter {
    gcra: Gcra,
    global: Bucket,
    unknown: Bucket,
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
            shards: (0..n).map(|_| Mutex::default()).collect(),
            // n ≤ max_keys, so every shard holds at least one key and the total stays ≤
            // max_keys; node indices are u32 below NIL.
            per_shard: (max_keys / n).min(NIL as usize),
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
    pub(super) fn count(&self, verdict: Verdict) -> Verdict {
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
        if let Some(i) = shard.find(hash, key) {
            // Every request counts as use, rejected ones too: a key kept in debt by its own
            // requests stays in the table, and stays limited.
            shard.touch(i);
            let slot = &mut shard.nodes[i as usize];
            let (store, verdict) = self.gcra.step(slot.tat, now);
            if let Some(tat) = store {
                slot.tat = tat;
            }
            return verdict;
        }
        // First request of this key (or first since it was evicted): a fresh bucket is full,
        // so it is admitted.
        let (store, verdict) = self.gcra.step(0, now);
        let Some(tat) = store else {
            return verdict;
        };
        if shard.len() < self.per_shard {
            shard.insert(key, hash, tat);
            return verdict;
        }
        let (victim, busy) = shard.victim(now);
        if busy {
            self.counters.evicted_busy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("rate limit: key table full; evicting the least recently used key");
        }
        shard.replace(victim, key, hash, tat);
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
        (0..self.shards.len())
            .map(|i| self.lock(i).sweep(now))
            .sum()
    }

    /// Keys currently held in the table.
    pub(super) fn key_count(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).len()).sum()
    }

    pub(super) fn stats(&self) -> RateLimitStats {
        RateLimitStats {
            delayed: self.counters.delayed.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
            evicted_busy: self.counters.evicted_busy.load(Ordering::Relaxed),
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

    /// One shard holding `max_keys`, so recency order is the table's, at 1/s with `burst`.
    fn one_shard(max_keys: usize, burst: u32) -> Limiter {
        let mut l = Limiter::new(Gcra::new(SECOND, burst, 0), max_keys);
        l.shards = vec![Mutex::default()].into_boxed_slice();
        l.per_shard = max_keys;
        l
    }

    fn allowed(l: &Limiter, key: &str, now: u64) -> bool {
        matches!(l.step(&KeyValue::from(key), now), Verdict::Allow { .. })
    }

    /// The table, the node vector and the recency list agree.
    fn check_invariants(l: &Limiter) {
        for shard in l.shards.iter() {
            let s = shard.lock().unwrap();
            assert_eq!(s.table.len(), s.nodes.len());
            assert!(s.nodes.len() <= l.per_shard);
            for (i, node) in s.nodes.iter().enumerate() {
                assert_eq!(s.find(node.hash, node.key.as_ref()), Some(i as u32));
            }
            let (mut seen, mut i, mut newer) = (0, s.newest, NIL);
            while i != NIL {
                let node = &s.nodes[i as usize];
                assert_eq!(node.newer, newer);
                seen += 1;
                newer = i;
                i = node.older;
            }
            assert_eq!(s.oldest, newer);
            assert_eq!(seen, s.nodes.len());
        }
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
                assert!(allowed(&l, &format!("client-{i}"), now), "new key {i}");
            }
            assert!(l.key_count() <= max_keys, "{} > {max_keys}", l.key_count());
            assert!(l.stats().evicted_busy > 0);
            check_invariants(&l);
        }
    }

    #[test]
    fn a_new_key_replaces_the_least_recently_used() {
        let l = one_shard(3, 1);
        for key in ["a", "b", "c"] {
            assert!(allowed(&l, key, 0));
        }
        // A request of "a", rejected, still counts as use: "b" is now the oldest.
        assert!(!allowed(&l, "a", 0));
        assert!(allowed(&l, "d", 0));
        assert_eq!(l.stats().evicted_busy, 1);
        // "a" kept its debt; "b" was forgotten, so it starts from a full bucket again.
        assert!(!allowed(&l, "a", 0));
        assert!(allowed(&l, "b", 0));
        assert!(!allowed(&l, "d", 0));
        assert_eq!(l.key_count(), 3);
        check_invariants(&l);
    }

    #[test]
    fn an_idle_key_is_replaced_before_a_busy_older_one() {
        let l = one_shard(2, 3);
        // "a" takes its whole burst (full again at 3 s); "b" one token (full again at 1.1 s).
        for _ in 0..3 {
            assert!(allowed(&l, "a", 0));
        }
        assert!(allowed(&l, "b", SECOND / 10));
        // At 2 s "a" is the least recently used but busy, "b" idle: "c" takes "b"'s place.
        assert!(allowed(&l, "c", 2 * SECOND));
        assert_eq!(l.stats().evicted_busy, 0);
        // "a" still owes one token: one left of three.
        assert!(matches!(
            l.step(&KeyValue::from("a"), 2 * SECOND),
            Verdict::Allow { slack, .. } if slack == SECOND
        ));
        check_invariants(&l);
    }

    #[test]
    fn idle_keys_are_evicted_to_make_room() {
        let (l, now) = limiter(1);
        assert!(allowed(&l, "a", now));
        // Two seconds later "a" is idle (its bucket refilled), so "b" takes its slot.
        let later = now + 2 * SECOND;
        assert!(allowed(&l, "b", later));
        assert!(!allowed(&l, "b", later));
        assert_eq!(l.stats().evicted_busy, 0);
        assert_eq!(l.key_count(), 1);
    }

    #[test]
    fn long_keys_are_stored_as_digests() {
        let (l, now) = limiter(100);
        let long_a = "a".repeat(10_000);
        let mut long_b = long_a.clone();
        long_b.push('b');
        assert!(allowed(&l, &long_a, now));
        assert!(allowed(&l, &long_b, now));
        assert!(!allowed(&l, &long_a, now));
        assert_eq!(l.key_count(), 2);
        let shard = l.shards.iter().find_map(|s| {
            let s = s.lock().unwrap();
            s.nodes
                .iter()
                .map(|node| matches!(node.key, StoredKey::Digest(..)))
                .next()
        });
        assert_eq!(shard, Some(true));
    }

    #[test]
    fn evict_idle_empties_refilled_buckets() {
        // Roomy shards: the seeded hash must not fill one by chance.
        let (l, now) = limiter(10_000);
        for i in 0..10u8 {
            l.step(&KeyValue::from(IpAddr::from([10, 0, 0, i])), now);
        }
        assert_eq!(l.key_count(), 10);
        assert_eq!(l.evict_idle(now), 0);
        assert_eq!(l.evict_idle(now + SECOND), 10);
        assert_eq!(l.key_count(), 0);
    }

    #[test]
    fn evict_idle_keeps_busy_keys_and_their_debt() {
        let l = one_shard(100, 3);
        for i in 0..20 {
            // Even keys take their whole burst (busy until 3 s), odd ones one token (1 s).
            let n = if i % 2 == 0 { 3 } else { 1 };
            for _ in 0..n {
                assert!(allowed(&l, &format!("k{i}"), 0));
            }
        }
        assert_eq!(l.evict_idle(SECOND + SECOND / 2), 10);
        check_invariants(&l);
        for i in (0..20).step_by(2) {
            // Still in debt at 1.5 s: one token back of three.
            assert!(
                matches!(
                    l.step(&KeyValue::from(format!("k{i}")), SECOND + SECOND / 2),
                    Verdict::Allow { slack, .. } if slack == SECOND / 2
                ),
                "k{i}"
            );
        }
        check_invariants(&l);
    }

    #[test]
    fn the_table_stays_consistent_under_churn() {
        let l = one_shard(16, 2);
        let mut now = 0;
        // A fixed pseudo-random walk over 64 keys and mixed gaps.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += (x >> 40) % (SECOND / 4);
            l.step(&KeyValue::from(format!("k{}", x % 64)), now);
            if step % 1_000 == 999 {
                l.evict_idle(now);
            }
            if step % 97 == 0 {
                check_invariants(&l);
            }
        }
        check_invariants(&l);
        assert!(l.key_count() <= 16);
    }
}
