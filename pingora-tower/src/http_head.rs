//! Measures of a request head shared by the tower server ([`serve`](crate::serve)) and the
//! [`proxy`](crate::proxy), so both refuse the same heads as too large.

use pingora_http::RequestHeader;

/// Bytes in the request head as the client sent it, approximately: the request line plus
/// `name: value\r\n` per header.
pub(crate) fn head_size(head: &RequestHeader) -> usize {
    let line = head.method.as_str().len() + head.raw_path().len() + 12;
    head.headers.iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    })
}
