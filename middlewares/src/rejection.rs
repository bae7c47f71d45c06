//! [`Rejection`]: how a layer's refusal becomes an answer, the same in both hosts.
//!
//! Every layer that answers on the backend's behalf (`429` from the rate limiter, `503` from an
//! open breaker, `504` from a timeout or retry's per-try timeout) has a small leaf error that
//! says why. This trait renders it once: as a tower [`Response`] and, with the `pingora`
//! feature, as a Pingora response head, so the two hosts can never answer differently.
//!
//! # Example
//! ```
//! # #[cfg(feature = "timeout")] {
//! use middlewares::Rejection;
//! use middlewares::timeout::Elapsed;
//!
//! let res: http::Response<String> = Elapsed::default().to_response();
//! assert_eq!(res.status(), 504);
//! // The answer carries the rejection, so an outer layer can tell it from the backend's 504.
//! assert!(res.extensions().get::<Elapsed>().is_some());
//! # }
//! ```

use http::{HeaderMap, Response, StatusCode};

/// A layer's refusal to pass a request on, and the answer that goes with it.
///
/// Implementors give the status and the headers; the provided methods render them. The rendered
/// tower response also carries the rejection itself in its extensions, so a layer further out
/// can tell a local answer from the backend's (retry never retries an open breaker's `503`; the
/// breaker does not blame the backend for a deadline the client shortened).
pub trait Rejection: Clone + Send + Sync + 'static {
    /// The status of the answer.
    fn status(&self) -> StatusCode;

    /// Inserts the answer's headers (none by default) into `headers`.
    fn write_headers(&self, headers: &mut HeaderMap) {
        let _ = headers;
    }

    /// The answer's headers, as [`write_headers`](Self::write_headers) writes them.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.write_headers(&mut headers);
        headers
    }

    /// The tower answer: [`status`](Self::status), the headers, an empty `B::default()` body,
    /// and this rejection in the extensions.
    fn to_response<B: Default>(&self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status();
        self.write_headers(res.headers_mut());
        res.extensions_mut().insert(self.clone());
        res
    }

    /// The Pingora answer: the same status and headers, and `Content-Length: 0` (the body is
    /// empty).
    ///
    /// # Errors
    /// Only if Pingora refuses a header, which the status and headers written here never give
    /// it reason to.
    #[cfg(feature = "pingora")]
    fn to_response_head(&self) -> pingora_error::Result<Box<pingora_http::ResponseHeader>> {
        let headers = self.headers();
        let mut head = pingora_http::ResponseHeader::build(self.status(), Some(headers.len() + 1))?;
        for (name, value) in &headers {
            head.append_header(name.clone(), value.clone())?;
        }
        head.insert_header(http::header::CONTENT_LENGTH, 0)?;
        Ok(Box::new(head))
    }
}

/// Whole seconds, rounded up: the unit of `Retry-After` and the `RateLimit` headers.
#[cfg(any(feature = "rate-limit", feature = "circuit-breaker"))]
pub(crate) fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(all(
    test,
    feature = "pingora",
    feature = "circuit-breaker",
    feature = "timeout"
))]
mod tests {
    use std::time::Duration;

    use super::Rejection;
    use crate::circuit_breaker::{CircuitOpen, State};
    use crate::timeout::Elapsed;

    #[test]
    fn both_hosts_render_the_same_status_and_headers() {
        let open = CircuitOpen::new(State::Open, Duration::from_millis(7_500));
        let res: http::Response<()> = open.to_response();
        let head = open.to_response_head().expect("valid head");
        assert_eq!(head.status, res.status());
        assert_eq!(head.headers["retry-after"], "8");
        assert_eq!(res.headers()["retry-after"], "8");
        assert_eq!(head.headers["content-length"], "0");
        assert_eq!(res.extensions().get::<CircuitOpen>(), Some(&open));

        let elapsed = Elapsed::new(http::StatusCode::REQUEST_TIMEOUT);
        let head = elapsed.to_response_head().expect("valid head");
        assert_eq!(head.status, 408);
        assert_eq!(head.headers.len(), 1, "only Content-Length");
    }
}
