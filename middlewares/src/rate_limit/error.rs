//! [`RateLimited`] (the rejection and its `429` rendering) and [`ConfigError`].

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

use crate::rejection::ceil_secs;
use crate::Rejection;

/// The `RateLimit-Policy` response header (draft-ietf-httpapi-ratelimit-headers-10).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` response header (draft-ietf-httpapi-ratelimit-headers-10).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A request was refused by the rate limiter.
///
/// Carries what the `429 Too Many Requests` answer needs, so the tower service and the Pingora
/// host render the same answer through [`Rejection`]:
///
/// ```text
/// Retry-After: 2
/// RateLimit-Policy: "default";q=100;w=60
/// RateLimit: "default";r=0;t=60
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    retry_after: Duration,
    reset: Duration,
    limit: u32,
    window_secs: u64,
}

impl RateLimited {
    pub(super) fn new(
        retry_after: Duration,
        reset: Duration,
        limit: u32,
        window_secs: u64,
    ) -> Self {
        RateLimited {
            retry_after,
            reset,
            limit,
            window_secs,
        }
    }

    /// How long until a request with the same key would be admitted without delay.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// `Retry-After` in whole seconds: [`retry_after`](Self::retry_after) rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// How long until the key's bucket is full again.
    pub fn reset(&self) -> Duration {
        self.reset
    }
}

impl Rejection for RateLimited {
    /// Always `429 Too Many Requests`.
    fn status(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }

    /// `Retry-After`, `RateLimit-Policy` and `RateLimit`.
    fn write_headers(&self, headers: &mut HeaderMap) {
        headers.reserve(3);
        headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
        headers.insert(RATELIMIT_POLICY, policy_value(self.limit, self.window_secs));
        headers.insert(RATELIMIT, quota_value(0, self.reset));
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited, retry after {}s", self.retry_after_secs())
    }
}

impl std::error::Error for RateLimited {}

pub use crate::ConfigError;

/// `"default";q=<limit>;w=<window secs>`.
pub(super) fn policy_value(limit: u32, window_secs: u64) -> HeaderValue {
    header_value(format_args!("\"default\";q={limit};w={window_secs}"))
}

/// `"default";r=<remaining>;t=<secs until the bucket is full>`.
pub(super) fn quota_value(remaining: u32, reset: Duration) -> HeaderValue {
    header_value(format_args!(
        "\"default\";r={remaining};t={}",
        ceil_secs(reset)
    ))
}

fn header_value(args: fmt::Arguments<'_>) -> HeaderValue {
    use std::io::Write;
    // Longest value: `"default";r=4294967295;t=18446744073709551616` fits in 64 bytes.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let len = match cursor.write_fmt(args) {
        Ok(()) => cursor.position() as usize,
        Err(_) => 0,
    };
    // Only ASCII digits, quotes, `;` and `=` are written, all valid in a header value.
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
}
