//! [`ServeTower`]: run any tower HTTP service (an axum `Router`, a hyper service) on a Pingora
//! listener, with request and response bodies streamed both ways.
//!
//! # Example
//! ```no_run
//! use axum::{routing::get, Router};
//! use pingora_tower::{server, ServeTower};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = Router::new().route("/", get(|| async { "hello from axum on pingora" }));
//! let running = server::spawn("127.0.0.1:0", ServeTower::new(app)).await?;
//! println!("listening on http://{}", running.local_addr());
//! running.shutdown().await;
//! # Ok(()) }
//! ```

mod drain;
mod driver;
pub(crate) mod framing;

pub use drain::MAX_DRAIN_BYTES;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_error::ErrorType;
use tower_service::Service;

use crate::body::PingoraBody;

/// The boxed error type services may return (anything that converts into it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default limit on the size of a request head (request line plus headers), in bytes.
///
/// Pingora itself accepts heads up to 1 MiB; like nginx (`large_client_header_buffers 4 8k`),
/// we answer `431 Request Header Fields Too Large` well before that.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

/// A Pingora [`HttpServerApp`] that answers every request with a tower service.
///
/// The service is cloned once per request (as hyper and axum do). Request bodies reach it as a
/// [`PingoraBody`] read from the client while the service polls it; response bodies are written
/// frame by frame as the service produces them, with `Content-Length` when the body's size hint
/// is exact and chunked encoding otherwise.
///
/// The client's address is inserted into the request extensions as a
/// [`std::net::SocketAddr`] and, with the `axum` feature (on by default), as
/// `axum::extract::ConnectInfo<SocketAddr>`, so axum's extractor and rate limiters keyed by IP
/// work unchanged. On a TLS listener ([`ListenOptions::tls`](crate::server::ListenOptions::tls)) it also
/// gets the connection's [`TlsInfo`](crate::tls::TlsInfo) (SNI name, client certificate).
///
/// A service error or a panic in a handler becomes a `500` for that request only (logged through
/// `tracing`); the server keeps serving. Hand it to [`server::spawn`](crate::server::spawn) to
/// run it in-process, or to a Pingora `Service` of your own.
///
/// Client timeouts and the connection cap are the harness's job
/// ([`ClientLimits`](crate::server::ClientLimits), on by default with
/// [`server::spawn`](crate::server::spawn)); under a Pingora `Service` of your own, Pingora's
/// behaviour applies instead (each read bounded to 60 s, keep-alive connections kept forever).
///
/// A request body the service leaves unread is drained, up to [`MAX_DRAIN_BYTES`] within
/// [`MAX_DRAIN_TIME`](crate::server::MAX_DRAIN_TIME), so the connection can serve the next
/// request; a longer rest closes the connection instead (with `Connection: close` on the
/// response when its `Content-Length` already says so), lingering briefly so the client reads
/// the response before the close. A response never carries both `Content-Length` and
/// `Transfer-Encoding` (RFC 9112 §6.2): when the body's length is known, a `Transfer-Encoding`
/// set by the service is dropped.
#[derive(Debug, Clone)]
pub struct ServeTower<S> {
    service: S,
    options: HttpServerOptions,
    max_header_bytes: usize,
}

impl<S> ServeTower<S> {
    /// Serves `service` with HTTP/1.1 (and h2 when TLS negotiates it).
    pub fn new(service: S) -> Self {
        ServeTower {
            service,
            options: HttpServerOptions::default(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }

    /// Also accepts cleartext HTTP/2 with prior knowledge (h2c) on the same port.
    pub fn h2c(mut self, enabled: bool) -> Self {
        self.options.h2c = enabled;
        self
    }

    /// Largest accepted request head, in bytes; larger ones get `431`.
    /// Defaults to [`DEFAULT_MAX_HEADER_BYTES`].
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Closes a keep-alive connection after this many requests.
    pub fn keepalive_request_limit(mut self, requests: Option<u32>) -> Self {
        self.options.keepalive_request_limit = requests;
        self
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

#[async_trait]
impl<S, B> HttpServerApp for ServeTower<S>
where
    S: Service<Request<PingoraBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // An idle keep-alive connection gives up its wait for the next request on shutdown.
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            () = shutdown_requested(shutdown.clone()) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if e.etype() == &ErrorType::InvalidHTTPHeader {
                    tracing::debug!(error = %e, "malformed request head, answering 400");
                    if let Err(e) = session.respond_error(400).await {
                        tracing::debug!(error = %e, "could not write the 400 response");
                    }
                } else {
                    tracing::debug!(error = %e, "reading the request head failed");
                }
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        // Pingora turns keep-alive off whenever the response starts before the request body
        // is read; the drain budget decides instead, so a small unread body (a 401 or 405 to a
        // form post) keeps the connection (see `drain`).
        session.set_close_on_response_before_downstream_finish(false);
        if framing::head_size(session.req_header()) > self.max_header_bytes {
            tracing::debug!(
                limit = self.max_header_bytes,
                "request head too large, answering 431"
            );
            if let Err(e) = session.respond_error(431).await {
                tracing::debug!(error = %e, "could not write the 431 response");
            }
            return None;
        }

        if !driver::serve_request(&self.service, &mut session).await {
            return None;
        }
        if !drain::drain_or_close(&mut session).await {
            return None;
        }

        let persistent_settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(stream) => {
                stream.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent_settings))
            }
            Err(e) => {
                tracing::debug!(error = %e, "finishing the response failed");
                None
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// Resolves once the shutdown watch says `true` (never, if its sender is gone without saying so).
pub(crate) async fn shutdown_requested(mut shutdown: ShutdownWatch) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
