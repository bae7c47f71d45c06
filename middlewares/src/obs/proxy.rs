//! The proxy host: [`ObsLayer`] as a [`ProxyPolicy`].
//!
//! `new_ctx` stamps the start (Pingora makes the context once the request head is read) and
//! holds the request in the active gauge; `request_filter` opens the span and settles the trace
//! context and request id; every attempt is timed from its peer selection to the upstream's head
//! (`upstream_response_filter`) or its failure (`fail_to_connect`, `error_while_proxy`);
//! `upstream_request_filter` sends the request id and `traceparent` upstream; `logging` records
//! the request.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::header::HeaderValue;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use tokio::time::Instant;
use tracing::Span;

use super::labels::{self, AttemptError};
use super::trace::{self, TraceContext};
use super::{ActiveGuard, ObsLayer, RouteLabel, ACCESS_LOG_TARGET, ATTEMPT_TARGET, SPAN_TARGET};
use crate::proxy_host::{Admission, PeerChoice, ProxyPolicy};

/// Per-request state of [`ObsLayer`] in the proxy.
#[derive(Debug)]
pub struct ObsCtx {
    start: Instant,
    _active: Option<ActiveGuard>,
    span: Span,
    trace: Option<TraceContext>,
    request_id: Option<HeaderValue>,
    attempts: u32,
    /// The running attempt: its start and backend label, until its outcome is recorded.
    attempt: Option<(Instant, Arc<str>)>,
    /// The last attempt's backend.
    upstream: Option<Arc<str>>,
}

impl ObsCtx {
    /// The request id sent upstream, once `request_filter` ran.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }

    /// Upstream attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

fn attempt_error(e: &Error) -> AttemptError {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::SocketError => AttemptError::Connect,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => AttemptError::Timeout,
        ErrorType::ConnectionClosed
        | ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::InvalidHTTPHeader
        | ErrorType::H1Error
        | ErrorType::H2Error
        | ErrorType::H2Downgrade
        | ErrorType::InvalidH2 => AttemptError::Protocol,
        _ => AttemptError::Other,
    }
}

/// Most backend labels kept: backends come from the configuration, so this is only a bound
/// against a proxy that makes peers up per request (their labels are then formatted each time).
const MAX_BACKEND_LABELS: usize = 1_024;

/// Backend labels by address, so an attempt does not format its peer's address: a short list
/// scanned under a read lock (a proxy has few backends).
#[derive(Debug, Default)]
pub(crate) struct BackendLabels(RwLock<Vec<(SocketAddr, Arc<str>)>>);

impl BackendLabels {
    fn get(&self, peer: &HttpPeer) -> Arc<str> {
        let Some(&addr) = peer.address().as_inet() else {
            return Arc::from(peer.address().to_string());
        };
        if let Ok(list) = self.0.read() {
            if let Some((_, label)) = list.iter().find(|(a, _)| *a == addr) {
                return label.clone();
            }
        }
        let label: Arc<str> = Arc::from(addr.to_string());
        if let Ok(mut list) = self.0.write() {
            if list.len() < MAX_BACKEND_LABELS && !list.iter().any(|(a, _)| *a == addr) {
                list.push((addr, label.clone()));
            }
        }
        label
    }
}

impl ObsLayer {
    /// Records the running attempt's outcome, once.
    fn end_attempt(&self, ctx: &mut ObsCtx, outcome: Result<&'static str, AttemptError>) {
        let Some((start, backend)) = ctx.attempt.take() else {
            return;
        };
        let took = start.elapsed();
        if let Some(m) = &self.shared.metrics {
            m.record_attempt(&backend, outcome, took);
        }
        tracing::debug!(
            target: ATTEMPT_TARGET,
            parent: &ctx.span,
            attempt = ctx.attempts,
            server.address = &*backend,
            status = outcome.ok(),
            error_type = outcome.err().map(AttemptError::as_str),
            took_ms = took.as_secs_f64() * 1e3,
            "upstream attempt"
        );
        ctx.upstream = Some(backend);
    }
}

impl ProxyPolicy for ObsLayer {
    type Ctx = ObsCtx;

    fn new_ctx(&self) -> ObsCtx {
        ObsCtx {
            start: Instant::now(),
            _active: self.shared.metrics.as_ref().map(|m| m.request_started()),
            span: Span::none(),
            trace: None,
            request_id: None,
            attempts: 0,
            attempt: None,
            upstream: None,
        }
    }

    fn request_filter(&self, session: &mut Session, ctx: &mut ObsCtx) -> Result<Admission> {
        let req = session.req_header();
        ctx.trace = self.trace_of(&req.headers);
        if let Some(name) = &self.shared.request_id {
            let trace_ctx = ctx.trace;
            let (id, _) = trace::request_id(&req.headers, name, || {
                trace::id_value(trace_ctx.map_or_else(trace::new_id, |t| t.trace_id))
            });
            ctx.request_id = Some(id);
        }
        ctx.span = tracing::info_span!(
            target: SPAN_TARGET,
            "request",
            http.request.method = labels::method(&req.method),
            url.path = req.uri.path(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            server.address = tracing::field::Empty,
            attempts = tracing::field::Empty,
            request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            trace_id = ctx.trace.map(|t| tracing::field::display(trace::TraceId(t.trace_id))),
        );
        Ok(Admission::Continue)
    }

    fn span<'a>(&self, ctx: &'a ObsCtx) -> Option<&'a Span> {
        Some(&ctx.span)
    }

    fn select_peer(
        &self,
        _session: &mut Session,
        peer: &mut HttpPeer,
        ctx: &mut ObsCtx,
    ) -> Result<PeerChoice> {
        // A peer skipped by an inner layer comes back here with the next one: only the last
        // offer of an attempt is recorded, as the earlier one never started.
        if ctx.attempt.is_none() {
            ctx.attempts += 1;
        }
        ctx.attempt = Some((Instant::now(), self.shared.backends.get(peer)));
        Ok(PeerChoice::Accept)
    }

    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ObsCtx,
    ) -> Result<()> {
        if let (Some(name), Some(id)) = (&self.shared.request_id, &ctx.request_id) {
            if upstream_request.headers.get(name) != Some(id) {
                upstream_request.insert_header(name.clone(), id.clone())?;
            }
        }
        if let Some(t) = &ctx.trace {
            upstream_request.insert_header(trace::TRACEPARENT, t.traceparent())?;
        }
        Ok(())
    }

    fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ObsCtx,
    ) -> Result<()> {
        self.end_attempt(ctx, Ok(labels::status(upstream_response.status)));
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut ObsCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.end_attempt(ctx, Err(attempt_error(&e)));
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut ObsCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        self.end_attempt(ctx, Err(attempt_error(&e)));
        e
    }

    fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut ObsCtx) {
        if let Some(e) = e {
            self.end_attempt(ctx, Err(attempt_error(e)));
        }
        let now = Instant::now();
        let latency: Duration = now.saturating_duration_since(ctx.start);
        let status = session.response_written().map(|h| h.status);
        // No head written: the client left (nginx's 499).
        let status_label = status.map_or("499", labels::status);
        let req = session.req_header();
        let method = labels::method(&req.method);
        let route = req.extensions.get::<RouteLabel>().map(|r| &*r.0);
        if let Some(m) = &self.shared.metrics {
            m.record_request(method, status_label, route.unwrap_or(""), latency, now);
        }
        let latency_ms = latency.as_secs_f64() * 1e3;
        let code = status.map_or(499, |s| s.as_u16());
        ctx.span
            .record("http.route", route)
            .record("http.response.status_code", code)
            .record("latency_ms", latency_ms)
            .record("server.address", ctx.upstream.as_deref())
            .record("attempts", ctx.attempts);
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            parent: &ctx.span,
            client = session.client_addr().map(tracing::field::display),
            method,
            target = tracing::field::display(&req.uri),
            status = code,
            bytes = session.body_bytes_sent(),
            duration_ms = latency_ms,
            upstream = ctx.upstream.as_deref(),
            attempts = ctx.attempts,
            request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            error = e.map(tracing::field::display),
            "request"
        );
    }
}
