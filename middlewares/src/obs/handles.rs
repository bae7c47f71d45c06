//! Histogram handles by label values, looked up without hashing the labels' text.
//!
//! `HistogramVec::get_metric_with_label_values` hashes every label value and takes a read lock
//! on each call. The values a request records with are almost always the same few strings
//! (static method and status labels, route and backend names shared from the configuration),
//! so a slot chosen by their addresses, checked by their contents, finds the handle in a few
//! comparisons. A slot is filled once and never replaced; a label set whose slot is taken by
//! another goes through the vector's own lookup, so the cache can only be slower, never wrong.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramVec};

/// Slots per cache: more than the label sets a proxy records with in practice.
const SLOTS: usize = 256;

/// Histogram handles of one three-label histogram vector.
pub(crate) struct HandleCache {
    slots: Box<[OnceLock<Entry>]>,
}

struct Entry {
    labels: [Box<str>; 3],
    histogram: Histogram,
}

impl HandleCache {
    pub(crate) fn new() -> Self {
        HandleCache {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Records `value` in the histogram of `labels`.
    pub(crate) fn observe(&self, vec: &HistogramVec, labels: [&str; 3], value: f64) {
        let slot = &self.slots[slot_of(&labels)];
        if let Some(entry) = slot.get() {
            if entry.labels.iter().map(|l| &**l).eq(labels) {
                entry.histogram.observe(value);
                return;
            }
            return observe_uncached(vec, labels, value);
        }
        match vec.get_metric_with_label_values(&labels) {
            Ok(histogram) => {
                histogram.observe(value);
                let _ = slot.set(Entry {
                    labels: labels.map(Box::from),
                    histogram,
                });
            }
            Err(e) => tracing::debug!(error = %e, "metrics: label values refused"),
        }
    }
}

#[cold]
fn observe_uncached(vec: &HistogramVec, labels: [&str; 3], value: f64) {
    if let Ok(h) = vec.get_metric_with_label_values(&labels) {
        h.observe(value);
    }
}

/// A slot from the labels' addresses and lengths (the same shared strings land in the same slot).
fn slot_of(labels: &[&str; 3]) -> usize {
    let mut h: u64 = 0;
    for l in labels {
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

    #[test]
    fn equal_labels_at_other_addresses_record_in_the_same_series() {
        let vec = HistogramVec::new(HistogramOpts::new("t", "t"), &["a", "b", "c"]).unwrap();
        let cache = HandleCache::new();
        let route = String::from("/api");
        let copy = route.clone();
        cache.observe(&vec, ["GET", "200", &route], 0.1);
        cache.observe(&vec, ["GET", "200", &copy], 0.1);
        cache.observe(&vec, ["GET", "200", &route], 0.1);
        cache.observe(&vec, ["GET", "500", &route], 0.1);
        let count = |l: [&str; 3]| vec.with_label_values(&l).get_sample_count();
        assert_eq!(count(["GET", "200", "/api"]), 3);
        assert_eq!(count(["GET", "500", "/api"]), 1);
    }

    #[test]
    fn a_taken_slot_falls_back_to_the_vector() {
        let vec = HistogramVec::new(HistogramOpts::new("t", "t"), &["a", "b", "c"]).unwrap();
        let cache = HandleCache::new();
        // More label sets than slots: every one is still counted right.
        let routes: Vec<String> = (0..2 * SLOTS).map(|i| format!("/r{i}")).collect();
        for r in &routes {
            cache.observe(&vec, ["GET", "200", r], 0.1);
            cache.observe(&vec, ["GET", "200", r], 0.1);
        }
        for r in &routes {
            assert_eq!(
                vec.with_label_values(&["GET", "200", r]).get_sample_count(),
                2
            );
        }
    }
}
