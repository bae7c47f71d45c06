//! What an instance remembers between Redis calls: keys known to be over the limit (until they
//! may be admitted again) and, in lease mode, tokens taken from Redis and not yet spent.
//!
//! Bounded by a number of keys, split over shards by hash; a full shard first drops its expired
//! entries, and when none expired the new entry is simply not remembered (the next request of
//! that key asks Redis again: correct, only costlier).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

const SHARDS: usize = 16;

/// One shard: remembered keys by their name in Redis.
type Shard = HashMap<Box<[u8]>, Entry>;

/// One remembered key.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// Over the limit: rejected without asking Redis until `until`; `Retry-After` counts to
    /// `retry_at`, the `RateLimit` reset to `reset_at`.
    Over {
        until: Instant,
        retry_at: Instant,
        reset_at: Instant,
    },
    /// Lease mode: `tokens` granted by Redis, spendable until `expires`.
    Lease { tokens: u32, expires: Instant },
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        match *self {
            Entry::Over { until, .. } => until <= now,
            Entry::Lease { tokens, expires } => tokens == 0 || expires <= now,
        }
    }
}

/// What the table says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hint {
    /// Nothing known: ask Redis.
    Ask,
    /// Over the limit: reject. Durations from now.
    Over {
        retry_after: std::time::Duration,
        reset: std::time::Duration,
    },
    /// A leased token was taken: admit.
    Leased,
}

/// The table.
#[derive(Debug)]
pub(super) struct LocalTable {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl LocalTable {
    pub(super) fn new(max_keys: usize) -> Self {
        let n = SHARDS.min(max_keys).max(1);
        LocalTable {
            shards: (0..n).map(|_| Mutex::default()).collect(),
            per_shard: (max_keys / n).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) >> 32) as usize % self.shards.len();
        // Entries are plain values: a panic elsewhere cannot leave one half-written.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What is known about `key` at `now`; takes a leased token when there is one.
    pub(super) fn lookup(&self, key: &[u8], now: Instant) -> Hint {
        let mut shard = self.shard(key);
        let Some(entry) = shard.get_mut(key) else {
            return Hint::Ask;
        };
        if entry.expired(now) {
            shard.remove(key);
            return Hint::Ask;
        }
        match entry {
            Entry::Over {
                retry_at, reset_at, ..
            } => Hint::Over {
                retry_after: retry_at.saturating_duration_since(now),
                reset: reset_at.saturating_duration_since(now),
            },
            Entry::Lease { tokens, .. } => {
                *tokens -= 1;
                Hint::Leased
            }
        }
    }

    /// Remembers at `now` that `key` is over the limit until `until`.
    pub(super) fn over(
        &self,
        key: &[u8],
        now: Instant,
        until: Instant,
        retry_at: Instant,
        reset_at: Instant,
    ) {
        let entry = Entry::Over {
            until,
            retry_at,
            reset_at,
        };
        self.insert(key, entry, now);
    }

    /// Adds `tokens` leased tokens to `key`, spendable until `expires`, holding at most `cap`
    /// (the excess is dropped: calls in flight together may each bring a lease back).
    pub(super) fn lease(&self, key: &[u8], tokens: u32, cap: u32, expires: Instant, now: Instant) {
        let tokens = tokens.min(cap);
        if tokens == 0 {
            return;
        }
        let mut shard = self.shard(key);
        if let Some(Entry::Lease {
            tokens: held,
            expires: old,
        }) = shard.get_mut(key)
        {
            if *old > now {
                *held = held.saturating_add(tokens).min(cap);
                *old = expires;
                return;
            }
        }
        drop(shard);
        self.insert(key, Entry::Lease { tokens, expires }, now);
    }

    fn insert(&self, key: &[u8], entry: Entry, now: Instant) {
        let mut shard = self.shard(key);
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            shard.retain(|_, e| !e.expired(now));
            if shard.len() >= self.per_shard {
                return;
            }
        }
        shard.insert(key.into(), entry);
    }

    /// Leased tokens held for every key (expired ones included until looked up).
    pub(super) fn leased_tokens(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .map(|e| match e {
                        Entry::Lease { tokens, .. } => u64::from(*tokens),
                        Entry::Over { .. } => 0,
                    })
                    .sum::<u64>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_over_limit_key_is_remembered_until_its_time() {
        let t = LocalTable::new(100);
        let now = Instant::now();
        let s = Duration::from_secs(1);
        t.over(b"a", now, now + s, now + 2 * s, now + 3 * s);
        assert_eq!(
            t.lookup(b"a", now),
            Hint::Over {
                retry_after: 2 * s,
                reset: 3 * s
            }
        );
        assert_eq!(t.lookup(b"b", now), Hint::Ask);
        assert_eq!(t.lookup(b"a", now + s), Hint::Ask);
    }

    #[tokio::test(start_paused = true)]
    async fn leased_tokens_are_spent_once_and_expire() {
        let t = LocalTable::new(100);
        let now = Instant::now();
        let s = Duration::from_secs(1);
        t.lease(b"a", 2, 3, now + s, now);
        t.lease(b"a", 2, 3, now + s, now);
        assert_eq!(t.leased_tokens(), 3);
        assert_eq!(t.lookup(b"a", now), Hint::Leased);
        assert_eq!(t.leased_tokens(), 2);
        assert_eq!(t.lookup(b"a", now), Hint::Leased);
        assert_eq!(t.lookup(b"a", now), Hint::Leased);
        assert_eq!(t.lookup(b"a", now), Hint::Ask);
        t.lease(b"a", 3, 3, now + s, now);
        assert_eq!(t.lookup(b"a", now + s), Hint::Ask);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_drops_expired_entries_and_never_grows() {
        let t = LocalTable::new(1);
        let now = Instant::now();
        let s = Duration::from_secs(1);
        t.over(b"a", now, now + s, now + s, now + s);
        // Full, nothing expired: "b" is not remembered.
        t.over(b"b", now, now + s, now + s, now + s);
        assert_eq!(t.lookup(b"b", now), Hint::Ask);
        // Two seconds on, "a" expired: "b" takes its place.
        let later = now + 2 * s;
        t.over(b"b", later, later + s, later + s, later + s);
        assert!(matches!(t.lookup(b"b", later), Hint::Over { .. }));
        assert_eq!(t.lookup(b"a", later), Hint::Ask);
    }
}
