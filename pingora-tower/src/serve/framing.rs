//! HTTP/1 framing decisions for responses built by a tower service.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Method, StatusCode, Version};
use http_body::Body;
use pingora_http::ResponseHeader;

// Measured the same way by the proxy; kept here under its old path for `serve`.
pub(crate) use crate::http_head::head_size;

/// How the response body will be delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body is sent (HEAD, 204, 304, or an empty body with `Content-Length: 0`).
    NoBody,
    /// The body is written as it is produced (length known, chunked, or h2 frames).
    Stream,
    /// HTTP/1.0 client and unknown length: the end of the body is the end of the connection.
    CloseDelimited,
}

/// Sets `Content-Length` or `Transfer-Encoding` on `header` from the body's size hint, the way
/// hyper does, and says how the body must be written.
pub(crate) fn frame_response<B: Body>(
    header: &mut ResponseHeader,
    body: &B,
    method: &Method,
    version: Version,
    is_http2: bool,
) -> Framing {
    let status = header.status;
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodiless_status {
        header.remove_header(&CONTENT_LENGTH);
        header.remove_header(&TRANSFER_ENCODING);
        return Framing::NoBody;
    }
    if is_http2 {
        // h2 frames the body itself; connection-specific headers are not allowed there.
        header.remove_header(&TRANSFER_ENCODING);
        if !header.headers.contains_key(CONTENT_LENGTH) {
            if let Some(len) = body.size_hint().exact() {
                set_length(header, len);
            }
        }
        return if method == Method::HEAD {
            Framing::NoBody
        } else {
            Framing::Stream
        };
    }
    let user_length = header.headers.contains_key(CONTENT_LENGTH);
    if !user_length {
        match body.size_hint().exact() {
            Some(len) => {
                // RFC 9112 §6.2: never both framing headers; a known length wins over a
                // handler's own `Transfer-Encoding`.
                header.remove_header(&TRANSFER_ENCODING);
                set_length(header, len);
            }
            None if version == Version::HTTP_10 => {
                header.remove_header(&TRANSFER_ENCODING);
                return if method == Method::HEAD {
                    Framing::NoBody
                } else {
                    Framing::CloseDelimited
                };
            }
            None => {
                let _ =
                    header.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
        }
    } else {
        header.remove_header(&TRANSFER_ENCODING);
    }
    if method == Method::HEAD || (body.is_end_stream() && !user_length) {
        Framing::NoBody
    } else {
        Framing::Stream
    }
}

fn set_length(header: &mut ResponseHeader, len: u64) {
    let _ = header.insert_header(CONTENT_LENGTH, HeaderValue::from(len));
}
