//! [`TimeoutLayer`] and [`BodyTimeoutLayer`]: the timeout configuration and its policy methods.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use tower_layer::Layer;

use super::{BodyTimeout, Elapsed, Timeout, REQUEST_TIMEOUT_HEADER};

/// About thirty years: the deadline used when `now + timeout` does not fit in an `Instant`
/// (tokio uses the same horizon for "never").
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Applies a whole-request deadline to the inner service, answering `504 Gateway Timeout` (or
/// the status set with [`TimeoutLayer::status`]) when it passes. See the [module docs](super).
///
/// The deadline covers the time until the inner service returns its response head. To cover the
/// response body too, turn the layer into a [`BodyTimeoutLayer`] with
/// [`TimeoutLayer::with_body_deadline`].
///
/// Unlike the other layers it has no builder: every duration and status is a valid setting, so
/// there is nothing for a `build()` to refuse, and the chained setters here are `const`.
///
/// The layer is a few plain values (`Copy`); every service it builds reads the same
/// configuration. The Pingora host calls [`TimeoutLayer::deadline_for`] and
/// [`TimeoutLayer::elapsed`] on it, so both hosts compute the same deadline and answer alike.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
    status: StatusCode,
    honor_client_header: bool,
}

impl TimeoutLayer {
    /// A layer that gives each request `timeout` to produce its response head.
    pub const fn new(timeout: Duration) -> Self {
        TimeoutLayer {
            timeout,
            status: StatusCode::GATEWAY_TIMEOUT,
            honor_client_header: false,
        }
    }

    /// Answer timed-out requests with `status` instead of `504 Gateway Timeout`.
    pub const fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// When `true`, a request header [`x-request-timeout: <milliseconds>`](REQUEST_TIMEOUT_HEADER)
    /// shorter than the configured timeout shortens this request's deadline. Longer or
    /// unparsable values are ignored: a client can only ask for less time, never more.
    /// Off by default.
    pub const fn honor_client_header(mut self, honor: bool) -> Self {
        self.honor_client_header = honor;
        self
    }

    /// Turns this layer into a [`BodyTimeoutLayer`], whose deadline also covers streaming the
    /// response body. It wraps the response body in a [`TimeoutBody`](super::TimeoutBody), so
    /// the response body type changes; that is why it is a layer of its own.
    pub const fn with_body_deadline(self) -> BodyTimeoutLayer {
        BodyTimeoutLayer { timeout: self }
    }

    /// The configured timeout.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The status a timed-out request is answered with.
    pub const fn response_status(&self) -> StatusCode {
        self.status
    }

    /// Whether the `x-request-timeout` request header is honoured.
    pub const fn honors_client_header(&self) -> bool {
        self.honor_client_header
    }

    /// The error for a request whose deadline passed; it renders the answer through
    /// [`Rejection`](crate::Rejection).
    pub const fn elapsed(&self) -> Elapsed {
        Elapsed::new(self.status)
    }

    /// The deadline of a request whose headers are `headers`, received at `now`.
    ///
    /// `now + timeout`, or earlier when [`honor_client_header`](Self::honor_client_header) is
    /// on and the request carries a smaller valid `x-request-timeout`. This is the policy core:
    /// the tower service calls it once per request with `Instant::now()`, and the Pingora host
    /// calls it from `request_filter` to stamp the deadline it clamps upstream timeouts to.
    pub fn deadline_for(&self, headers: &HeaderMap, now: Instant) -> Instant {
        self.request_deadline(headers, now).0
    }

    /// [`deadline_for`](Self::deadline_for), and the [`Elapsed`] that answers when it passes
    /// (marked as the client's when the client's header shortened it).
    pub fn request_deadline(&self, headers: &HeaderMap, now: Instant) -> (Instant, Elapsed) {
        let asked = self
            .honor_client_header
            .then(|| client_timeout(headers))
            .flatten()
            .filter(|asked| *asked < self.timeout);
        let elapsed = self.elapsed().with_client_deadline(asked.is_some());
        (deadline(now, asked.unwrap_or(self.timeout)), elapsed)
    }
}

/// `now + timeout`, saturating at a far-future instant instead of panicking on overflow.
fn deadline(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// The `x-request-timeout` value in milliseconds, if present and a plain decimal number.
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&REQUEST_TIMEOUT_HEADER)?;
    let ms: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms))
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, *self)
    }
}

/// A [`TimeoutLayer`] whose deadline also covers the response body: the response body is
/// wrapped in a [`TimeoutBody`](super::TimeoutBody) that ends with a boxed [`Elapsed`] error
/// when the deadline passes mid-stream.
///
/// Built with [`TimeoutLayer::with_body_deadline`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeoutLayer {
    timeout: TimeoutLayer,
}

impl BodyTimeoutLayer {
    /// The underlying head-deadline configuration (for [`TimeoutLayer::deadline_for`] and
    /// friends).
    pub const fn timeout_layer(&self) -> &TimeoutLayer {
        &self.timeout
    }
}

impl<S> Layer<S> for BodyTimeoutLayer {
    type Service = BodyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyTimeout::new(inner, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_TIMEOUT_HEADER, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn client_header_only_shortens_when_enabled() {
        let now = Instant::now();
        let layer = TimeoutLayer::new(Duration::from_secs(2));
        let on = layer.honor_client_header(true);
        assert_eq!(
            layer.deadline_for(&headers("500"), now),
            now + Duration::from_secs(2)
        );
        assert_eq!(
            on.deadline_for(&headers("500"), now),
            now + Duration::from_millis(500)
        );
        assert_eq!(
            on.deadline_for(&headers("5000"), now),
            now + Duration::from_secs(2)
        );
        assert_eq!(
            on.deadline_for(&headers("-1"), now),
            now + Duration::from_secs(2)
        );
        assert_eq!(
            on.deadline_for(&headers("1.5"), now),
            now + Duration::from_secs(2)
        );
        assert_eq!(
            on.deadline_for(&HeaderMap::new(), now),
            now + Duration::from_secs(2)
        );
    }

    #[test]
    fn huge_timeout_does_not_overflow() {
        let now = Instant::now();
        let d = TimeoutLayer::new(Duration::MAX).deadline_for(&HeaderMap::new(), now);
        assert!(d > now + Duration::from_secs(86_400 * 365));
    }
}
