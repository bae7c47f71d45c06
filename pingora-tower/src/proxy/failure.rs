//! How a request that failed for good is answered: the status for each error, and the short
//! error response [`RoutingProxy`](super::RoutingProxy) writes in `fail_to_proxy`.

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

use super::ProxyCtx;

/// `upstream_peer` found no healthy backend it had not tried yet for this request (answered
/// `502`). Compare with [`Error::etype`].
pub const NO_BACKEND_LEFT: ErrorType = ErrorType::new("NoBackendLeft");

fn is_timeout(etype: &ErrorType) -> bool {
    matches!(
        etype,
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    )
}

/// The status `fail_to_proxy` answers for `e`; 0 when the client is gone.
///
/// A passed request deadline arrives here as `HTTPStatus(504)` (the timeout policy replaces
/// the final error), and an upstream timeout (connect, read, write, a late response head) is
/// `504` too.
pub(super) fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        t => match e.esource() {
            ErrorSource::Downstream => match t {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Upstream if is_timeout(t) => 504,
            ErrorSource::Upstream => 502,
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Answers `e` with its status and a short text body (`502 Bad Gateway\n`), unless the client
/// is gone or a response already started; the connection is not reused.
pub(super) async fn respond(session: &mut Session, e: &Error, ctx: &ProxyCtx) -> FailToProxy {
    let code = status_for(e);
    if code > 0 && session.response_written().is_none() {
        let reason = http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = Bytes::from(format!("{code} {reason}\n"));
        if let Err(write) = session.respond_error_with_body(code, body).await {
            tracing::debug!(error = %write, "could not send the error response");
        }
    }
    if code >= 500 {
        tracing::warn!(
            status = code,
            error = %e,
            route = ?ctx.route(),
            backend = ?ctx.backend(),
            attempts = ctx.attempts(),
            "proxy error"
        );
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let up = |t| Error::explain(t, "x").into_up();
        assert_eq!(status_for(&up(ErrorType::ConnectRefused)), 502);
        assert_eq!(status_for(&up(ErrorType::ReadTimedout)), 504);
        assert_eq!(status_for(&up(NO_BACKEND_LEFT)), 502);
        assert_eq!(
            status_for(&Error::explain(ErrorType::HTTPStatus(404), "x")),
            404
        );
        let down = Error::explain(ErrorType::ReadError, "x").into_down();
        assert_eq!(status_for(&down), 0);
    }
}
