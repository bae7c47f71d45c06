//! One request/response exchange between a Pingora session and a tower service.
//!
//! A single task owns the session and selects over three things: the service's future, feeding
//! the request body into the [`PingoraBody`] channel, and (once the head is written) pulling
//! response frames. Only the body feeder borrows the session inside the `select!`; every write
//! happens after it, so no two futures ever hold the session at once.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, TryFutureExt};
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{Method, Request, Response, Version};
use http_body::Body;
use http_body_util::BodyExt;
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;
use tokio::sync::{mpsc, Notify};
use tower::ServiceExt;
use tower_service::Service;

use super::framing::{frame_response, Framing};
use super::BoxError;
use crate::body::{BodyError, PingoraBody};

/// Serves the request already read into `session`. Returns whether the connection may be
/// reused for another request.
pub(crate) async fn serve_request<S, B>(service: &S, session: &mut ServerSession) -> bool
where
    S: Service<Request<PingoraBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (request, mut feeder) = build_request(session);
    let method = request.method().clone();
    let version = request.version();

    let call = AssertUnwindSafe(
        service
            .clone()
            .oneshot(request)
            .map_err(Into::<BoxError>::into),
    )
    .catch_unwind();
    tokio::pin!(call);
    let outcome = loop {
        tokio::select! {
            outcome = &mut call => break outcome,
            () = feeder.step(session), if feeder.is_active() => {}
        }
    };

    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::error!(error = %e, %method, "service failed, answering 500");
            return answer_500(session).await;
        }
        Err(panic) => {
            tracing::error!(panic = panic_message(&panic), %method, "handler panicked, answering 500");
            return answer_500(session).await;
        }
    };

    let (parts, body) = response.into_parts();
    let mut header = ResponseHeader::from(parts);
    let framing = frame_response(&mut header, &body, &method, version, session.is_http2());
    if framing == Framing::CloseDelimited
        || (feeder.abandoned() && super::drain::unread_body_exceeds_drain(session))
    {
        // Close-delimited, or the service dropped a body too long to drain: say
        // `Connection: close` up front.
        session.set_keepalive(None);
    }
    if let Err(e) = session.write_response_header(Box::new(header)).await {
        tracing::debug!(error = %e, "writing the response head failed");
        return false;
    }
    if framing == Framing::NoBody {
        return feeder.finished_cleanly();
    }

    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            frame = AssertUnwindSafe(body.frame().map(|f| f.map(|r| r.map_err(Into::<BoxError>::into))))
                .catch_unwind() => frame,
            () = feeder.step(session), if feeder.is_active() => continue,
        };
        match frame {
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if let Err(e) = session.write_response_body(data, false).await {
                        tracing::debug!(error = %e, "writing the response body failed");
                        return false;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        if let Err(e) = session.write_response_trailers(trailers).await {
                            tracing::debug!(error = %e, "writing response trailers failed");
                            return false;
                        }
                    }
                }
            },
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // The head is out already: the only honest signal left is a truncated body.
                tracing::error!(error = %e, "response body failed mid-stream, closing the connection");
                return false;
            }
            Err(panic) => {
                tracing::error!(
                    panic = panic_message(&panic),
                    "response body panicked, closing the connection"
                );
                return false;
            }
        }
    }
    if let Err(e) = session.finish_body().await {
        tracing::debug!(error = %e, "finishing the response body failed");
        return false;
    }
    feeder.finished_cleanly()
}

async fn answer_500(session: &mut ServerSession) -> bool {
    if let Err(e) = session.respond_error(500).await {
        tracing::debug!(error = %e, "could not write the 500 response");
    }
    // `respond_error` turns keep-alive off: the request body may be half read.
    false
}

fn panic_message(panic: &Box<dyn Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Turns the session's request head into an `http::Request` whose body is fed by the returned
/// [`BodyFeeder`].
fn build_request(session: &ServerSession) -> (Request<PingoraBody>, BodyFeeder) {
    let head = session.req_header();
    let mut parts = head.as_owned_parts();
    if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
        parts.extensions.insert(*addr);
        #[cfg(feature = "axum")]
        parts.extensions.insert(axum::extract::ConnectInfo(*addr));
    }
    if let Some(info) = session
        .digest()
        .and_then(|d| d.ssl_digest.as_deref())
        .and_then(crate::tls::TlsInfo::from_digest)
    {
        parts.extensions.insert(info.clone());
    }
    let expects_continue = parts.version == Version::HTTP_11
        && parts
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let has_body = parts.method != Method::HEAD && !body_is_empty(&parts.headers, session);
    if !has_body {
        return (
            Request::from_parts(parts, PingoraBody::empty()),
            BodyFeeder::done(),
        );
    }
    let content_length = if parts.headers.contains_key(TRANSFER_ENCODING) {
        None
    } else {
        parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (body, tx, demand) = PingoraBody::channel(content_length);
    let feeder = BodyFeeder {
        state: if expects_continue {
            FeedState::AwaitingDemand(demand)
        } else {
            FeedState::Reading
        },
        tx: Some(tx),
    };
    (Request::from_parts(parts, body), feeder)
}

fn body_is_empty(headers: &http::HeaderMap, session: &ServerSession) -> bool {
    if session.is_http2() {
        // h2 says so with END_STREAM on the headers frame; Pingora exposes it as an empty body.
        return false;
    }
    !headers.contains_key(TRANSFER_ENCODING)
        && headers
            .get(CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Moves request body chunks from the session into the [`PingoraBody`] channel, one at a time.
struct BodyFeeder {
    state: FeedState,
    tx: Option<mpsc::Sender<Result<Bytes, BodyError>>>,
}

enum FeedState {
    /// `Expect: 100-continue`: nothing is read until the service first polls the body.
    AwaitingDemand(Arc<Notify>),
    /// Waiting for the next chunk from the client.
    Reading,
    /// A chunk read from the client, waiting for room in the channel.
    Holding(Result<Bytes, BodyError>),
    /// The body ended, failed, or the service dropped it.
    Done { clean: bool },
}

impl BodyFeeder {
    fn done() -> Self {
        BodyFeeder {
            state: FeedState::Done { clean: true },
            tx: None,
        }
    }

    fn is_active(&self) -> bool {
        !matches!(self.state, FeedState::Done { .. })
    }

    /// Whether the service dropped the request body (or it ended): nothing more will be fed.
    fn abandoned(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// Whether the request body was read to its end without error (so the connection's framing
    /// is intact; Pingora drains any unread rest before reusing it).
    fn finished_cleanly(&self) -> bool {
        match self.state {
            FeedState::Done { clean } => clean,
            // The client is still waiting for `100 Continue` and may never send the body it
            // announced: draining it could hang, so this connection is not reused.
            FeedState::AwaitingDemand(_) => false,
            // Unread body left: drained within a small budget before reuse, or the
            // connection closes (see `drain`).
            FeedState::Reading | FeedState::Holding(_) => true,
        }
    }

    /// One step of feeding. Cancel-safe at every await: a chunk read is kept in `Holding`
    /// until the channel takes it.
    async fn step(&mut self, session: &mut ServerSession) {
        match &mut self.state {
            FeedState::AwaitingDemand(demand) => {
                demand.notified().await;
                self.state = FeedState::Reading;
                if let Err(e) = session.write_continue_response().await {
                    tracing::debug!(error = %e, "writing 100 Continue failed");
                    self.fail(BodyError::new(e.to_string()));
                }
            }
            FeedState::Reading => match session.read_request_body().await {
                Ok(Some(chunk)) => self.state = FeedState::Holding(Ok(chunk)),
                Ok(None) => {
                    self.tx = None;
                    self.state = FeedState::Done { clean: true };
                }
                Err(e) => self.fail(BodyError::new(e.to_string())),
            },
            FeedState::Holding(_) => {
                // A cloned sender keeps `self.tx` intact if this step is cancelled mid-wait.
                let permit = match self.tx.clone() {
                    Some(tx) => tx.reserve_owned().await.ok(),
                    None => None,
                };
                let Some(permit) = permit else {
                    // The service dropped the body: stop reading; the rest is drained within a
                    // small budget or the connection closes (see `drain`).
                    self.tx = None;
                    self.state = FeedState::Done { clean: true };
                    return;
                };
                if let FeedState::Holding(chunk) =
                    std::mem::replace(&mut self.state, FeedState::Reading)
                {
                    let failed = chunk.is_err();
                    permit.send(chunk);
                    if failed {
                        self.tx = None;
                        self.state = FeedState::Done { clean: false };
                    }
                }
            }
            FeedState::Done { .. } => std::future::pending().await,
        }
    }

    /// Hands `error` to the service and stops feeding.
    fn fail(&mut self, error: BodyError) {
        self.state = FeedState::Holding(Err(error));
    }
}
