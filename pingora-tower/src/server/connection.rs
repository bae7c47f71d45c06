//! One client connection: admitted under the connection cap, wrapped in a [`TimedStream`],
//! and served request after request.
//!
//! This replaces Pingora's own per-connection loop (`impl ServerApp for HttpServerApp`) with
//! the same steps, so that the harness knows where one request ends and the next begins: that
//! is where the keep-alive idle timeout starts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Peek, Ssl, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::sync::Notify;

use super::limits::ClientLimits;
use super::options::ListenOptions;
use super::timed_stream::TimedStream;
use crate::tls::TlsConfig;

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest Pingora may spend draining a request body the app left unread before it reuses
/// the connection; past it the connection closes instead (see
/// [`ServeTower`](crate::ServeTower) for its own, tighter drain).
pub const MAX_DRAIN_TIME: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
pub(crate) struct ConnectionCount {
    active: AtomicUsize,
    changed: Notify,
}

impl ConnectionCount {
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Counts a new connection unless `max` are already served.
    fn admit(self: &Arc<Self>, max: usize) -> Option<ConnectionGuard> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionGuard(self.clone()))
    }

    /// Resolves once no connection is served.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Decrements the connection count when a connection ends, however it ends.
struct ConnectionGuard(Arc<ConnectionCount>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// Wraps an HTTP app: counts and caps its connections, and bounds every wait on the client.
pub(crate) struct Tracked<A> {
    pub(crate) app: Arc<A>,
    pub(crate) connections: Arc<ConnectionCount>,
    pub(crate) limits: ClientLimits,
    /// Terminates TLS on each connection (see [`Tracked::tls_handshake`]).
    pub(crate) tls: Option<Arc<Acceptor>>,
}

impl<A> Clone for Tracked<A> {
    fn clone(&self) -> Self {
        Tracked {
            app: self.app.clone(),
            connections: self.connections.clone(),
            limits: self.limits,
            tls: self.tls.clone(),
        }
    }
}

impl<A> Tracked<A> {
    /// `app` held to `options`' limits and TLS, with a fresh connection count; fails when a
    /// limit is invalid or the TLS settings cannot make an acceptor.
    pub(crate) fn new(app: A, options: &ListenOptions) -> std::io::Result<Self> {
        options.limits.validate()?;
        Ok(Tracked {
            app: Arc::new(app),
            connections: Arc::new(ConnectionCount::default()),
            limits: options.limits,
            tls: options.tls.as_ref().map(TlsConfig::acceptor).transpose()?,
        })
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Tracked<A> {
    /// The TLS handshake, here rather than in Pingora's listener (which allows it 60 s, before
    /// any connection cap): it counts against the cap and must finish within the header
    /// timeout, like the request head that follows.
    async fn tls_handshake(&self, acceptor: &Acceptor, stream: Stream) -> Option<Stream> {
        let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
            tracing::error!("a TLS listener got a connection that is not TCP; closing it");
            return None;
        };
        match tokio::time::timeout(self.limits.header_timeout, acceptor.tls_handshake(*tcp)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake not done within the header timeout");
                None
            }
        }
    }

    /// Serves HTTP/1 requests on `stream` until the connection is not reusable.
    async fn serve_http1(&self, stream: Box<TimedStream>, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(stream);
        // Pingora's per-read keep-alive wait would only add a second, coarser clock (whole
        // seconds) to the stream's own deadlines.
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(0) });
        session.set_keepalive_reuses_remaining(
            self.app
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        loop {
            // The stream bounds every read and write; Pingora's own per-read 60 s would cut a
            // longer configured timeout short.
            session.set_read_timeout(None);
            session.set_write_timeout(None);
            session.set_total_drain_timeout(Some(MAX_DRAIN_TIME));
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            let (stream, settings) = reused.consume();
            let mut timed = match stream.into_any().downcast::<TimedStream>() {
                Ok(timed) => timed,
                Err(_) => {
                    tracing::error!("the app returned a connection of another type; closing it");
                    return;
                }
            };
            timed.await_next_request();
            session = ServerSession::new_http1(timed);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Tracked<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_guard) = self.connections.admit(self.limits.max_connections) else {
            tracing::debug!(
                max_connections = self.limits.max_connections,
                "connection limit reached, closing a new connection"
            );
            return None;
        };
        let stream = match &self.tls {
            Some(acceptor) => self.tls_handshake(acceptor, stream).await?,
            None => stream,
        };
        let mut stream = Box::new(TimedStream::new(stream, &self.limits));
        let options = self.app.server_options();
        let alpn = stream.selected_alpn_proto();
        let custom =
            options.is_some_and(|o| o.force_custom) || matches!(alpn, Some(ALPN::Custom(_)));
        let mut h2 = matches!(alpn, Some(ALPN::H2));
        if !h2 && !custom && options.is_some_and(|o| o.h2c) && stream.get_ssl_digest().is_none() {
            let mut preface = [0u8; H2_PREFACE.len()];
            match stream.try_peek(&mut preface).await {
                Ok(peeked) => h2 = peeked && preface == H2_PREFACE,
                Err(e) => {
                    tracing::debug!(error = %e, "no request before the header timeout");
                    return None;
                }
            }
        }
        if h2 || custom {
            if h2 {
                stream.multiplexed();
            }
            // Pingora's own loop: it detects the same protocol from the same bytes.
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.app).await;
    }
}
