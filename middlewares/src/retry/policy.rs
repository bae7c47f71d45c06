//! Which requests and outcomes are retried: the host-agnostic decision core.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};

/// The `Idempotency-Key` request header (IETF draft `httpapi-idempotency-key-header`).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Whether `method` is idempotent per RFC 9110 §9.2.2: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`
/// and `DELETE`.
#[inline]
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Reads a `Retry-After` header given as delta-seconds (`Retry-After: 120`).
///
/// Returns `None` when the header is absent or not delta-seconds. The HTTP-date form
/// (`Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`) is deliberately not parsed: it needs the wall
/// clock, while this crate runs on tokio's (possibly paused) clock; such a response is retried
/// after the normal backoff instead. Values too large for `u64` saturate to [`Duration::MAX`].
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.as_bytes();
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some(secs.map_or(Duration::MAX, Duration::from_secs))
}

/// A set of status codes (100..=999) as a bitset: no allocation, constant-time lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusSet([u64; 16]);

impl StatusSet {
    pub(crate) const fn empty() -> Self {
        StatusSet([0; 16])
    }

    pub(crate) fn insert(&mut self, status: StatusCode) {
        let n = status.as_u16() as usize;
        self.0[n / 64] |= 1 << (n % 64);
    }

    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        let n = status.as_u16() as usize;
        self.0[n / 64] & (1 << (n % 64)) != 0
    }

    fn iter(&self) -> impl Iterator<Item = StatusCode> + '_ {
        (100u16..1000).filter_map(|n| {
            let code = StatusCode::from_u16(n).ok()?;
            self.contains(code).then_some(code)
        })
    }
}

impl FromIterator<StatusCode> for StatusSet {
    fn from_iter<I: IntoIterator<Item = StatusCode>>(iter: I) -> Self {
        let mut set = StatusSet::empty();
        for s in iter {
            set.insert(s);
        }
        set
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|s| s.as_u16()))
            .finish()
    }
}

/// What the policy says about one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// Not a status the policy retries: hand the response to the client.
    Final,
    /// A retryable status. `retry_after` is the server's `Retry-After` (on `429`/`503`, at most
    /// [`RetryPolicy::max_retry_after`]): wait that long instead of the backoff delay.
    Retryable {
        /// The delay the server asked for, if any.
        retry_after: Option<Duration>,
    },
    /// A retryable status whose `Retry-After` exceeds [`RetryPolicy::max_retry_after`]: do not
    /// retry, hand the response to the client.
    RetryAfterTooLong(Duration),
}

/// The retry rules, free of tower and Pingora types so both hosts apply the same decisions.
///
/// Obtain it from [`RetryLayer::policy`](super::RetryLayer::policy). A request is retried when
/// all hold:
/// - [`is_retryable_request`](Self::is_retryable_request) (idempotent method, or a non-idempotent
///   one carrying `Idempotency-Key` when enabled);
/// - the attempt failed: an inner error, a per-try timeout, or a status with
///   [`ResponseClass::Retryable`];
/// - fewer than [`max_retries`](Self::max_retries) retries were made;
/// - the request body was fully captured within [`max_replay_body`](Self::max_replay_body);
/// - the shared [`Budget`](super::Budget) allows a withdrawal.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) statuses: StatusSet,
    pub(crate) retry_with_idempotency_key: bool,
    pub(crate) max_replay_body: usize,
    pub(crate) max_retry_after: Duration,
    pub(crate) per_try_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// Default retryable statuses: `502`, `503`, `504`.
    pub const DEFAULT_STATUSES: [StatusCode; 3] = [
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT,
    ];
    /// Default request-body replay limit: 64 KiB.
    pub const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;
    /// Default longest honoured `Retry-After`: 5 s.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

    pub(crate) fn new(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            statuses: Self::DEFAULT_STATUSES.into_iter().collect(),
            retry_with_idempotency_key: false,
            max_replay_body: Self::DEFAULT_MAX_REPLAY_BODY,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
            per_try_timeout: None,
        }
    }

    /// The most retries (attempts after the first) made for one request.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The most request-body bytes kept for replay.
    pub fn max_replay_body(&self) -> usize {
        self.max_replay_body
    }

    /// The longest `Retry-After` honoured; a longer one means "do not retry".
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The per-attempt timeout, if any.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Whether a non-idempotent request carrying `Idempotency-Key` may be retried.
    pub fn retry_with_idempotency_key(&self) -> bool {
        self.retry_with_idempotency_key
    }

    /// The retryable statuses, ascending.
    pub fn retryable_statuses(&self) -> impl Iterator<Item = StatusCode> + '_ {
        self.statuses.iter()
    }

    /// Whether a request with this method and headers may be retried at all: idempotent methods
    /// (see [`is_idempotent`]) always; others only with an `Idempotency-Key` header and
    /// [`retry_with_idempotency_key`](Self::retry_with_idempotency_key) on.
    #[inline]
    pub fn is_retryable_request(&self, method: &Method, headers: &HeaderMap) -> bool {
        is_idempotent(method)
            || (self.retry_with_idempotency_key && headers.contains_key(IDEMPOTENCY_KEY))
    }

    /// Whether `status` is in the retryable set.
    #[inline]
    pub fn is_retryable_status(&self, status: StatusCode) -> bool {
        self.statuses.contains(status)
    }

    /// Whether another retry is allowed after `retries_done` retries.
    pub fn has_retries_left(&self, retries_done: u32) -> bool {
        retries_done < self.max_retries
    }

    /// Classifies a response: final, retryable (with the server's `Retry-After` on `429`/`503`),
    /// or retryable but asking to wait longer than [`max_retry_after`](Self::max_retry_after).
    pub fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> ResponseClass {
        if !self.is_retryable_status(status) {
            return ResponseClass::Final;
        }
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                parse_retry_after(headers)
            }
            _ => None,
        };
        match retry_after {
            Some(d) if d > self.max_retry_after => ResponseClass::RetryAfterTooLong(d),
            retry_after => ResponseClass::Retryable { retry_after },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn post_needs_key_and_option() {
        let mut p = RetryPolicy::new(2);
        let keyed = headers(&[("idempotency-key", "abc")]);
        assert!(!p.is_retryable_request(&Method::POST, &HeaderMap::new()));
        assert!(!p.is_retryable_request(&Method::POST, &keyed));
        p.retry_with_idempotency_key = true;
        assert!(!p.is_retryable_request(&Method::POST, &HeaderMap::new()));
        assert!(p.is_retryable_request(&Method::POST, &keyed));
        assert!(p.is_retryable_request(&Method::PATCH, &keyed));
        assert!(p.is_retryable_request(&Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn default_statuses() {
        let p = RetryPolicy::new(1);
        let got: Vec<u16> = p.retryable_statuses().map(|s| s.as_u16()).collect();
        assert_eq!(got, [502, 503, 504]);
        assert!(!p.is_retryable_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!p.is_retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!p.is_retryable_status(StatusCode::OK));
        let set: StatusSet = [StatusCode::from_u16(999).unwrap(), StatusCode::CONTINUE]
            .into_iter()
            .collect();
        assert!(set.contains(StatusCode::from_u16(999).unwrap()));
        assert!(set.contains(StatusCode::CONTINUE));
        assert!(!set.contains(StatusCode::OK));
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", " 0 ")])),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "+3")])), None);
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "-3")])), None);
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "1.5")])), None);
        assert_eq!(
            parse_retry_after(&headers(&[(
                "retry-after",
                "Fri, 31 Dec 1999 23:59:59 GMT"
            )])),
            None
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "99999999999999999999999")])),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn classify() {
        let mut p = RetryPolicy::new(1);
        p.statuses.insert(StatusCode::TOO_MANY_REQUESTS);
        let none = HeaderMap::new();
        let ra2 = headers(&[("retry-after", "2")]);
        let ra9 = headers(&[("retry-after", "9")]);
        assert_eq!(
            p.classify_response(StatusCode::OK, &ra2),
            ResponseClass::Final
        );
        assert_eq!(
            p.classify_response(StatusCode::BAD_GATEWAY, &ra2),
            ResponseClass::Retryable { retry_after: None },
            "Retry-After is read on 429 and 503 only"
        );
        assert_eq!(
            p.classify_response(StatusCode::SERVICE_UNAVAILABLE, &none),
            ResponseClass::Retryable { retry_after: None }
        );
        assert_eq!(
            p.classify_response(StatusCode::TOO_MANY_REQUESTS, &ra2),
            ResponseClass::Retryable {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            p.classify_response(StatusCode::SERVICE_UNAVAILABLE, &ra9),
            ResponseClass::RetryAfterTooLong(Duration::from_secs(9))
        );
        assert!(p.has_retries_left(0));
        assert!(!p.has_retries_left(1));
    }
}
