//! Histogram handles by label values, looked up without hashing the labels' text.
//!
//! `HistogramVec::get_metric_with_label_values` hashes every label value and takes a read lock
//! on each call. The values a request records with are almost always the same few strings:
//! two from fixed sets (`&'static str`: method, status, error type) and one from the
//! configuration (a route or backend name, shared). A slot chosen by their addresses finds the
//! handle; the static labels are checked by address first (a static string is never freed, so
//! the same address is the same text), the configured one by content. A slot is filled once and
//! never replaced; a label set whose slot is taken by another goes through the vector's own
//! lookup, so the cache can only be slower, never wrong.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramVec};

/// Slots per cache: more than the label sets a proxy records with in practice.
const SLOTS: usize = 256;

/// Histogram handles of one three-label histogram vector whose labels are one configured
/// value and two static ones.
pub(crate) struct HandleCache {
    slots: Box<[OnceLock<Entry>]>,
    /// Where the configured value goes among the vector's labels (the static ones fill the
    /// others in order).
    configured_at: usize,
}

struct Entry {
    statics: [&'static str; 2],
    configured: Box<str>,
    histogram: Histogram,
}

impl HandleCache {
    pub(crate) fn new(configured_at: usize) -> Self {
        assert!(configured_at < 3, "three labels");
        HandleCache {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            configured_at,
        }
    }

    /// Records `value` in the histogram of these labels.
    pub(crate) fn observe(
        &self,
        vec: &HistogramVec,
        configured: &str,
        statics: [&'static str; 2],
        value: f64,
    ) {
        let slot = &self.slots[slot_of(configured, statics)];
        if let Some(entry) = slot.get() {
            if same_static(entry.statics[0], statics[0])
                && same_static(entry.statics[1], statics[1])
                && *entry.configured == *configured
            {
                entry.histogram.observe(value);
                return;
            }
            return observe_uncached(vec, &self.labels(configured, statics), value);
        }
        match vec.get_metric_with_label_values(&self.labels(configured, statics)) {
            Ok(histogram) => {
                histogram.observe(value);
                let _ = slot.set(Entry {
                    statics,
                    configured: Box::from(configured),
                    histogram,
                });
            }
            Err(e) => tracing::debug!(error = %e, "metrics: label values refused"),
        }
    }

    /// The labels in the vector's order.
    fn labels<'a>(&self, configured: &'a str, statics: [&'static str; 2]) -> [&'a str; 3] {
        match self.configured_at {
            0 => [configured, statics[0], statics[1]],
            1 => [statics[0], configured, statics[1]],
            _ => [statics[0], statics[1], configured],
        }
    }
}

/// Two static strings are the same text at the same address (the same text may also sit at two
/// addresses: then compared by content).
fn same_static(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

#[cold]
fn observe_uncached(vec: &HistogramVec, labels: &[&str; 3], value: f64) {
    if let Ok(h) = vec.get_metric_with_label_values(labels) {
        h.observe(value);
    }
}

/// A slot from the labels' addresses and lengths (the same shared strings land in the same slot).
fn slot_of(configured: &str, statics: [&'static str; 2]) -> usize {
    let mut h: u64 = 0;
    for l in [configured, statics[0], statics[1]] {
        h = (h ^ (l.as_ptr() as u64) ^ ((l.len() as u64) << 48))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = h.rotate_left(23);
    }
    (h >> 32) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn vec() -> HistogramVec {
        HistogramVec::new(HistogramOpts::new("t", "t"), &["a", "b", "c"]).unwrap()
    }

    #[test]
    fn equal_labels_at_other_addresses_record_in_the_same_series() {
        let vec = vec();
        let cache = HandleCache::new(2);
        let route = String::from("/api");
        let copy = route.clone();
        // The same static text at another address.
        let ok_elsewhere: &'static str = Box::leak(String::from("200").into_boxed_str());
        cache.observe(&vec, &route, ["GET", "200"], 0.1);
        cache.observe(&vec, &copy, ["GET", "200"], 0.1);
        cache.observe(&vec, &route, ["GET", ok_elsewhere], 0.1);
        cache.observe(&vec, &route, ["GET", "500"], 0.1);
        let count = |l: [&str; 3]| vec.with_label_values(&l).get_sample_count();
        assert_eq!(count(["GET", "200", "/api"]), 3);
        assert_eq!(count(["GET", "500", "/api"]), 1);
    }

    #[test]
    fn the_configured_label_goes_where_the_vector_has_it() {
        let vec = vec();
        let cache = HandleCache::new(0);
        cache.observe(&vec, "10.0.0.1:80", ["", "connect"], 0.1);
        assert_eq!(
            vec.with_label_values(&["10.0.0.1:80", "", "connect"])
                .get_sample_count(),
            1
        );
    }

    #[test]
    fn a_taken_slot_falls_back_to_the_vector() {
        let vec = vec();
        let cache = HandleCache::new(2);
        // More label sets than slots: every one is still counted right.
        let routes: Vec<String> = (0..2 * SLOTS).map(|i| format!("/r{i}")).collect();
        for r in &routes {
            cache.observe(&vec, r, ["GET", "200"], 0.1);
            cache.observe(&vec, r, ["GET", "200"], 0.1);
        }
        for r in &routes {
            assert_eq!(
                vec.with_label_values(&["GET", "200", r]).get_sample_count(),
                2
            );
        }
    }
}
