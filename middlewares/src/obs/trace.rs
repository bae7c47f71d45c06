//! W3C trace context (`traceparent`) and request ids: read from the request, made up when
//! missing, passed on.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The default request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client (it would bloat every log line). A longer or
/// unprintable one is not used: left out of logs and spans, and replaced upstream only when ids
/// are generated (otherwise it goes upstream as sent, like any other header).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A trace id that displays as 32 lowercase hex digits (formatted only when a subscriber
/// records it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// One request's place in a trace: the trace it belongs to, the caller's span (if it sent a
/// `traceparent`) and our own span id, which the upstream sees as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// The caller's span id, when it sent a valid `traceparent`.
    pub parent_id: Option<u64>,
    /// This hop's span id (never zero).
    pub span_id: u64,
    /// The trace flags (bit 0: sampled), the caller's or `01`.
    pub flags: u8,
}

impl TraceContext {
    /// Continues the caller's trace when `headers` hold a valid `traceparent` (version 00, or
    /// a later one read as 00).
    pub fn continued(headers: &HeaderMap) -> Option<Self> {
        Self::continued_from(headers.get(&TRACEPARENT)?)
    }

    /// [`continued`](Self::continued) from the `traceparent` value itself.
    pub fn continued_from(traceparent: &HeaderValue) -> Option<Self> {
        let (trace_id, parent, flags) = parse(traceparent.as_bytes())?;
        Some(TraceContext {
            trace_id,
            parent_id: Some(parent),
            span_id: nonzero_u64(),
            flags,
        })
    }

    /// A new trace (sampled) with this hop as its root.
    pub fn start() -> Self {
        TraceContext {
            trace_id: new_id(),
            parent_id: None,
            span_id: nonzero_u64(),
            flags: 1,
        }
    }

    /// [`continued`](Self::continued), or a [new](Self::start) trace when the request has no
    /// valid `traceparent`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::continued(headers).unwrap_or_else(Self::start)
    }

    /// The `traceparent` to send upstream: this trace, with this hop's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex(&mut out[3..35], &self.trace_id.to_be_bytes());
        out[35] = b'-';
        hex(&mut out[36..52], &self.span_id.to_be_bytes());
        out[52] = b'-';
        hex(&mut out[53..55], &[self.flags]);
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> HeaderValue {
        id_value(self.trace_id)
    }
}

/// A request's id: the client's (kept as it came), or made here from a 128-bit id (written as
/// 32 hex digits only where it is sent or logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    /// The client's, when [`sane_request_id`].
    Client(HeaderValue),
    /// Made here (the trace id, or [`new_id`]).
    Made(u128),
}

impl RequestId {
    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        match self {
            RequestId::Client(v) => v.clone(),
            RequestId::Made(id) => id_value(*id),
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Printable ASCII, by `sane_request_id`.
            RequestId::Client(v) => f.write_str(v.to_str().unwrap_or("")),
            RequestId::Made(id) => TraceId(*id).fmt(f),
        }
    }
}

/// Whether a client's request id is kept: printable ASCII, 1 to [`MAX_REQUEST_ID_LEN`] bytes
/// (a longer one would bloat every log line and upstream request; otherwise one is made only
/// when asked, from the trace id so logs and traces join).
pub fn sane_request_id(v: &HeaderValue) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_LEN
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// Most headers for which [`two_headers`] compares names instead of hashing them.
const SCAN_UP_TO: usize = 8;

/// The first values of `a` and `b` in `headers`: in one pass comparing names when the map is
/// small (two hashed lookups cost more than a few comparisons, most of them of a standard name
/// against a custom one), by lookup otherwise.
pub(crate) fn two_headers<'h>(
    headers: &'h HeaderMap,
    a: &HeaderName,
    b: Option<&HeaderName>,
) -> (Option<&'h HeaderValue>, Option<&'h HeaderValue>) {
    if headers.len() > SCAN_UP_TO {
        return (headers.get(a), b.and_then(|b| headers.get(b)));
    }
    let (mut found_a, mut found_b) = (None, None);
    for (name, value) in headers {
        if found_a.is_none() && name == a {
            found_a = Some(value);
        } else if found_b.is_none() && Some(name) == b {
            found_b = Some(value);
        }
    }
    (found_a, found_b)
}

/// A non-zero 128-bit id (a trace id, or a request id when there is no trace): unique, not
/// secret. The high half is random per thread; the low half walks a bijection of a per-thread
/// counter (SplitMix64), so two ids of one thread never repeat and ids of two threads differ
/// unless their random halves collide (one chance in 2^64). A `rand` draw per request costs
/// several times more, and nothing asks trace or request ids to be unpredictable.
pub fn new_id() -> u128 {
    IDS.with(|ids| {
        let (high, low) = ids.next();
        (u128::from(high) << 64) | u128::from(low)
    })
}

/// A non-zero span id from the same per-thread sequence as [`new_id`].
fn nonzero_u64() -> u64 {
    IDS.with(|ids| {
        let (high, low) = ids.next();
        let id = high.rotate_left(32) ^ low;
        if id == 0 {
            1
        } else {
            id
        }
    })
}

thread_local! {
    static IDS: IdSequence = IdSequence::seeded();
}

/// One thread's id sequence: a random non-zero tag and a SplitMix64 state.
struct IdSequence {
    tag: u64,
    state: std::cell::Cell<u64>,
}

impl IdSequence {
    fn seeded() -> Self {
        // Once per thread: `rand`'s generator seeded from the OS.
        let (tag, state): (u64, u64) = rand::random();
        IdSequence {
            tag: tag | 1,
            state: std::cell::Cell::new(state),
        }
    }

    /// The thread's tag and the next value of its sequence.
    fn next(&self) -> (u64, u64) {
        let state = self.state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.state.set(state);
        (self.tag, splitmix64(state))
    }
}

/// SplitMix64's output function: a bijection on `u64` that spreads a counter's bits.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `id` as 32 lowercase hex digits in a header value.
pub fn id_value(id: u128) -> HeaderValue {
    HeaderValue::from_bytes(&hex_id(id)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `id` as 32 lowercase hex digits.
pub(crate) fn hex_id(id: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex(&mut out, &id.to_be_bytes());
    out
}

fn hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

fn unhex(s: &[u8]) -> Option<u128> {
    let mut v: u128 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids non-zero (W3C Trace Context).
/// A later version (`01` to `fe`) is read the same way, as the standard asks, and may carry more
/// fields after another `-`; `ff` is invalid.
fn parse(v: &[u8]) -> Option<(u128, u64, u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let fits = match unhex(&v[..2])? {
        0 => v.len() == 55,
        0xff => false,
        _ => v.len() == 55 || v[55] == b'-',
    };
    if !fits {
        return None;
    }
    let trace = unhex(&v[3..35])?;
    let parent = u64::try_from(unhex(&v[36..52])?).ok()?;
    let flags = u8::try_from(unhex(&v[53..55])?).ok()?;
    (trace != 0 && parent != 0).then_some((trace, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_and_replaces_the_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        let out = t.traceparent();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert_eq!(parse(out.as_bytes()).unwrap().1, t.span_id);
    }

    #[test]
    fn malformed_or_zero_ids_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // Version 00 has exactly four fields; ff is no version.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A later version's fourth field ends at the end or at a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            assert_eq!(TraceContext::continued(&h), None, "{bad}");
            let t = TraceContext::from_headers(&h);
            assert_eq!(t.parent_id, None, "{bad}");
            assert_eq!(t.flags, 1);
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        for later in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(later));
            let t = TraceContext::continued(&h).unwrap_or_else(|| panic!("{later}"));
            assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
            assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
            assert!(t.traceparent().to_str().unwrap().starts_with("00-"));
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-1")));
        for bad in ["x".repeat(200), String::new(), "a b".into()] {
            assert!(
                !sane_request_id(&HeaderValue::from_str(&bad).unwrap()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ids_do_not_repeat_within_or_across_threads() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(new_id()));
        }
        let other: Vec<u128> = std::thread::spawn(|| (0..10_000).map(|_| new_id()).collect())
            .join()
            .unwrap();
        for id in other {
            assert!(seen.insert(id));
        }
        assert!(seen.iter().all(|&id| id != 0 && (id >> 64) != 0));
        assert!((0..1_000).all(|_| nonzero_u64() != 0));
    }

    #[test]
    fn two_headers_finds_the_first_values_in_small_and_large_maps() {
        for filler in [0, 3, SCAN_UP_TO + 4] {
            let mut h = HeaderMap::new();
            for i in 0..filler {
                h.insert(
                    HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            h.append(X_REQUEST_ID, HeaderValue::from_static("first"));
            h.append(X_REQUEST_ID, HeaderValue::from_static("second"));
            h.insert(TRACEPARENT, HeaderValue::from_static("tp"));
            let (tp, id) = two_headers(&h, &TRACEPARENT, Some(&X_REQUEST_ID));
            assert_eq!(tp.unwrap(), "tp", "{filler}");
            assert_eq!(id.unwrap(), "first", "{filler}");
            assert_eq!(two_headers(&h, &TRACEPARENT, None).1, None);
            h.remove(TRACEPARENT);
            assert_eq!(two_headers(&h, &TRACEPARENT, Some(&X_REQUEST_ID)).0, None);
        }
    }
}
