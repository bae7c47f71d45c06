//! A bounded map from keys (a route, a tenant, an upstream address) to breakers.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use http::StatusCode;

use super::breaker::{Breaker, Config, Outcome};

/// Breakers by key, all built from one layer's settings. Cheap to clone (shares the map).
///
/// The proxy host keeps one breaker per upstream address here
/// (`breakers.get("10.0.0.7:8080")`) and skips backends whose
/// [`Breaker::is_call_permitted`] is `false` during peer selection.
///
/// The map holds at most `max_keys` breakers. Adding one more evicts a breaker nobody holds
/// right now, preferring a closed one; breakers in use (held by a permit, a host or the layer's
/// single default) are never evicted, so the map can briefly exceed the bound when all are.
#[derive(Clone)]
pub struct Breakers {
    inner: Arc<Registry>,
}

struct Registry {
    config: Arc<Config>,
    max_keys: usize,
    map: RwLock<HashMap<Arc<str>, Breaker>>,
}

impl fmt::Debug for Breakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breakers")
            .field("config", &self.inner.config)
            .field("max_keys", &self.inner.max_keys)
            .field("len", &self.len())
            .finish()
    }
}

impl Breakers {
    pub(crate) fn new(config: Arc<Config>, max_keys: usize) -> Breakers {
        Breakers {
            inner: Arc::new(Registry {
                config,
                max_keys: max_keys.max(1),
                map: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The breaker for `key`, created closed on first use.
    pub fn get(&self, key: &str) -> Breaker {
        if let Some(b) = self.find(key) {
            return b;
        }
        let mut map = self
            .inner
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = map.get(key) {
            return b.clone();
        }
        if map.len() >= self.inner.max_keys {
            evict_one(&mut map);
        }
        let key: Arc<str> = Arc::from(key);
        let breaker = Breaker::new(key.clone(), self.inner.config.clone());
        map.insert(key, breaker.clone());
        breaker
    }

    /// The breaker for `key` if one exists (never creates one).
    pub fn find(&self, key: &str) -> Option<Breaker> {
        self.inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The keys that have a breaker, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// How many breakers exist.
    pub fn len(&self) -> usize {
        self.inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no breaker exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most breakers this registry keeps (see the type's docs).
    #[cfg(feature = "pingora")]
    pub(crate) fn max_keys(&self) -> usize {
        self.inner.max_keys
    }

    /// Classifies a call result with the layer's classifier (see [`Breaker::classify`]).
    pub fn classify(&self, result: Result<StatusCode, ()>) -> Outcome {
        match &self.inner.config.classifier {
            Some(classify) => classify(result),
            None => Outcome::classify_default(result),
        }
    }
}

/// Removes one unused breaker, a closed one if there is one.
fn evict_one(map: &mut HashMap<Arc<str>, Breaker>) {
    let mut fallback = None;
    let mut victim = None;
    for (key, breaker) in map.iter() {
        if !breaker.is_unused() {
            continue;
        }
        if breaker.state() == super::State::Closed {
            victim = Some(key.clone());
            break;
        }
        if fallback.is_none() {
            fallback = Some(key.clone());
        }
    }
    match victim.or(fallback) {
        Some(key) => {
            map.remove(&key);
        }
        None => tracing::warn!(
            len = map.len(),
            "circuit breaker registry full and every breaker in use; growing past max_keys"
        ),
    }
}
