//! Label values from fixed sets, so no request can add a series.

use http::{Method, StatusCode};

/// The `http_request_method` label: one of the nine methods of RFC 9110 and RFC 5789, or
/// `_OTHER` (OpenTelemetry's rule), so a client cannot create series with made-up methods.
pub fn method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// The `http_response_status_code` label: the three digits of a common status, else its class
/// (`1xx` to `5xx`), else `_OTHER` (600–999, which `http::StatusCode` also holds: not a server
/// error).
pub fn status(status: StatusCode) -> &'static str {
    // `StatusCode::as_str` borrows a static table but is typed with `self`'s lifetime; the
    // common statuses are spelled out, the rest share one bucket per class.
    let code = status.as_u16();
    let spelled = match code {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        429 => "429",
        431 => "431",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "",
    };
    if !spelled.is_empty() {
        return spelled;
    }
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "_OTHER",
    }
}

/// Why an upstream attempt failed, the `error_type` label of client-side metrics: a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// The connection could not be made (refused, unreachable, connect timeout).
    Connect,
    /// A read or write to the upstream timed out.
    Timeout,
    /// The upstream closed or reset the connection, or sent something unreadable.
    Protocol,
    /// Anything else.
    Other,
}

impl AttemptError {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptError::Connect => "connect",
            AttemptError::Timeout => "timeout",
            AttemptError::Protocol => "protocol",
            AttemptError::Other => "_OTHER",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_set_share_one_label() {
        assert_eq!(method(&Method::GET), "GET");
        assert_eq!(method(&Method::from_bytes(b"BREW").unwrap()), "_OTHER");
    }

    #[test]
    fn statuses_are_spelled_or_bucketed() {
        assert_eq!(status(StatusCode::OK), "200");
        assert_eq!(status(StatusCode::IM_A_TEAPOT), "4xx");
        assert_eq!(status(StatusCode::from_u16(599).unwrap()), "5xx");
        assert_eq!(status(StatusCode::from_u16(999).unwrap()), "_OTHER");
        assert_eq!(status(StatusCode::from_u16(600).unwrap()), "_OTHER");
    }
}
