//! What happens to a request body the service did not read: a short drain so the connection
//! can be reused, or a close.
//!
//! Pingora drains an unread body before reusing a connection at whatever pace the client
//! sends it, so a `405` to a 2 GB upload would keep reading 2 GB. Here at most
//! [`MAX_DRAIN_BYTES`] are read, within [`MAX_DRAIN_TIME`](crate::server::MAX_DRAIN_TIME);
//! past either the connection is closed. The close lingers like nginx's `lingering_close`:
//! the write side is shut first and up to another [`MAX_DRAIN_BYTES`] of input are discarded
//! within what is left of the time budget, so the response and its end reach the client
//! before the kernel resets the connection on unread data.

use http::header::CONTENT_LENGTH;
use pingora_core::protocols::http::ServerSession;
use tokio::time::Instant;

use crate::server::MAX_DRAIN_TIME;

/// Most bytes of an unread request body read (and discarded) to keep a connection reusable,
/// like hyper's and nginx's small discard budgets; a longer rest closes the connection.
pub const MAX_DRAIN_BYTES: u64 = 64 * 1024;

/// Whether the body the service left unread is known to exceed [`MAX_DRAIN_BYTES`] (its
/// `Content-Length` says so), so the connection will close whatever happens.
pub(crate) fn unread_body_exceeds_drain(session: &mut ServerSession) -> bool {
    if session.is_http2() || session.is_body_done() {
        return false;
    }
    let declared = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    declared
        .is_some_and(|len| len.saturating_sub(session.body_bytes_read() as u64) > MAX_DRAIN_BYTES)
}

/// Reads the rest of the request body within the drain budget. Returns whether the body
/// ended, so the connection can be reused; otherwise closes it, lingering, and returns `false`.
pub(crate) async fn drain_or_close(session: &mut ServerSession) -> bool {
    if session.is_http2() || session.is_body_done() {
        return true;
    }
    let deadline = Instant::now() + MAX_DRAIN_TIME;
    // Keep-alive already off (the client's `Connection: close`, or a body known too long):
    // nothing to save by draining, only the lingering close.
    if session.get_keepalive().is_some() && !unread_body_exceeds_drain(session) {
        let mut drained = 0u64;
        loop {
            match tokio::time::timeout_at(deadline, session.read_request_body()).await {
                Ok(Ok(Some(chunk))) => {
                    drained += chunk.len() as u64;
                    if drained > MAX_DRAIN_BYTES {
                        break;
                    }
                }
                Ok(Ok(None)) => return true,
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    tracing::debug!("request body left unread past the drain budget, closing the connection");
    // Lingering close: the response's end is on its way (FIN) before the rest is discarded.
    let _ = tokio::time::timeout_at(deadline, session.shutdown()).await;
    let mut discarded = 0u64;
    while discarded <= MAX_DRAIN_BYTES {
        match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => discarded += chunk.len() as u64,
            _ => break,
        }
    }
    false
}
