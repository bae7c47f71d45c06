//! The proxy host: [`ObsLayer`] as a [`ProxyPolicy`].
//!
//! `new_ctx` stamps the start (Pingora makes the context once the request head is read) and
//! holds the request in the active gauge; `request_filter` opens the span and settles the trace
//! context and request id; every attempt is timed from the start of its peer selection
//! (`before_upstream_peer`, which leaves the selection itself unwrapped) to the upstream's head
//! (`upstream_response_filter`) or its failure (`fail_to_connect`, `error_while_proxy`), and
//! learns its backend and connect time from `connected_to_upstream`; `upstream_request_filter`
//! sends the request id and `traceparent` upstream; `logging` records the request.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::header::HeaderValue;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use tracing::Span;

use super::access_log::millis_f64;
use super::labels::{self, AttemptError};
use super::trace::{self, RequestId, TraceContext};
use super::{ActiveGuard, ObsLayer, RouteLabel, ACCESS_LOG_TARGET, ATTEMPT_TARGET, SPAN_TARGET};
use crate::proxy_host::{Admission, PeerStep, ProxyPolicy};

/// Per-request state of [`ObsLayer`] in the proxy.
///
/// Kept small: Pingora holds the context inline in its request future, which is built and
/// moved whole for every request, so each byte here is copied several times per request. What
/// most requests lack (a span, trace context, a request id) is boxed.
#[derive(Debug)]
pub struct ObsCtx {
    /// Times are nanoseconds on the layer's clock.
    start: u64,
    _active: Option<ActiveGuard>,
    /// Only an enabled span.
    span: Option<Box<Span>>,
    ids: Option<Box<Ids>>,
    /// When the running attempt began: its peer selection, else the moment it had a peer.
    attempt_start: u64,
    /// The running attempt's time to its connection.
    connect_nanos: u64,
    attempts: u32,
    phase: Phase,
    /// The backend of the running or the last attempt.
    upstream: Option<Arc<str>>,
}

/// The request's trace context and request id, when it has either.
#[derive(Debug)]
struct Ids {
    trace: Option<TraceContext>,
    request_id: Option<RequestId>,
}

/// Where the current upstream attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No attempt running.
    Idle,
    /// A peer is being selected (`attempt_start` is set); it is no attempt until it has one.
    Selecting,
    /// The attempt has its peer: connected (from the pool or not), or not connected (failed).
    Running { reused: Option<bool> },
}

impl ObsCtx {
    /// The request id sent upstream, once `request_filter` ran.
    pub fn request_id(&self) -> Option<HeaderValue> {
        self.request_id_ref().map(RequestId::header_value)
    }

    /// Upstream attempts so far (those that reached a peer).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn request_id_ref(&self) -> Option<&RequestId> {
        self.ids.as_ref()?.request_id.as_ref()
    }

    fn trace(&self) -> Option<TraceContext> {
        self.ids.as_ref()?.trace
    }

    fn enabled_span(&self) -> Option<&Span> {
        self.span.as_deref()
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

/// Most backend labels: backends come from the configuration, so this is only a bound against a
/// proxy that makes peers up per request (from a client's `Host`, say). Past it, attempts to new
/// addresses share the label `_OTHER`, so such a proxy adds no series either.
const MAX_BACKEND_LABELS: usize = 1_024;

static OTHER_BACKEND: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("_OTHER"));

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
        let Ok(mut list) = self.0.write() else {
            return Arc::from(addr.to_string());
        };
        if let Some((_, label)) = list.iter().find(|(a, _)| *a == addr) {
            return label.clone();
        }
        if list.len() >= MAX_BACKEND_LABELS {
            return OTHER_BACKEND.clone();
        }
        let label: Arc<str> = Arc::from(addr.to_string());
        list.push((addr, label.clone()));
        label
    }
}

impl ObsLayer {
    /// The running attempt now has `peer`: counted from here on. `connected`: whether the
    /// connection came from the pool, `None` when it failed.
    fn attempt_reached(&self, ctx: &mut ObsCtx, peer: &HttpPeer, connected: Option<bool>) {
        let now = self.shared.clock.now_nanos();
        if ctx.phase != Phase::Selecting {
            ctx.attempt_start = now;
        }
        ctx.attempts += 1;
        ctx.connect_nanos = now.saturating_sub(ctx.attempt_start);
        ctx.upstream = Some(self.shared.backends.get(peer));
        ctx.phase = Phase::Running { reused: connected };
    }

    /// Records the running attempt's outcome, once.
    fn end_attempt(&self, ctx: &mut ObsCtx, outcome: Result<&'static str, AttemptError>) {
        let Phase::Running { reused } = ctx.phase else {
            return;
        };
        ctx.phase = Phase::Idle;
        let Some(backend) = ctx.upstream.as_deref() else {
            return;
        };
        let took = Duration::from_nanos(
            self.shared
                .clock
                .now_nanos()
                .saturating_sub(ctx.attempt_start),
        );
        if let Some(m) = &self.shared.metrics {
            m.record_attempt(backend, outcome, took);
        }
        if let Some(span) = ctx.enabled_span() {
            let connect = Duration::from_nanos(ctx.connect_nanos);
            tracing::debug!(
                target: ATTEMPT_TARGET,
                parent: span,
                attempt = ctx.attempts,
                server.address = backend,
                status = outcome.ok(),
                error_type = outcome.err().map(AttemptError::as_str),
                connect_ms = reused.map(|_| millis_f64(connect)),
                reused,
                took_ms = millis_f64(took),
                "upstream attempt"
            );
        }
    }
}

impl ProxyPolicy for ObsLayer {
    type Ctx = ObsCtx;

    fn new_ctx(&self) -> ObsCtx {
        ObsCtx {
            start: self.shared.clock.now_nanos(),
            _active: self.shared.metrics.as_ref().map(|m| m.request_started()),
            span: None,
            ids: None,
            attempt_start: 0,
            connect_nanos: 0,
            attempts: 0,
            phase: Phase::Idle,
            upstream: None,
        }
    }

    fn request_filter(&self, session: &mut Session, ctx: &mut ObsCtx) -> Result<Admission> {
        let req = session.req_header();
        let (trace, client_id) = self.incoming(&req.headers);
        let request_id = match client_id {
            _ if self.shared.request_id.is_none() => None,
            Some(v) => Some(RequestId::Client(v.clone())),
            None if self.shared.generate_request_ids => Some(RequestId::Made(
                trace.map_or_else(trace::new_id, |t| t.trace_id),
            )),
            None => None,
        };
        if trace.is_some() || request_id.is_some() {
            ctx.ids = Some(Box::new(Ids { trace, request_id }));
        }
        if !tracing::dispatcher::has_been_set() {
            // No subscriber: skip the macro's fallback to the `log` crate for spans.
            return Ok(Admission::Continue);
        }
        let request_id = ctx.request_id_ref();
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "request",
            http.request.method = labels::method(&req.method),
            url.path = req.uri.path(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            server.address = tracing::field::Empty,
            attempts = tracing::field::Empty,
            request_id = request_id.map(tracing::field::display),
            trace_id = trace.map(|t| tracing::field::display(trace::TraceId(t.trace_id))),
        );
        if !span.is_disabled() {
            ctx.span = Some(Box::new(span));
        }
        Ok(Admission::Continue)
    }

    fn span<'a>(&self, ctx: &'a ObsCtx) -> Option<&'a Span> {
        ctx.enabled_span()
    }

    fn before_upstream_peer(&self, _session: &mut Session, ctx: &mut ObsCtx) -> Result<PeerStep> {
        // Timed from here; counted once it has a peer (`connected_to_upstream`,
        // `fail_to_connect`), so a selection an inner layer refuses is no attempt.
        ctx.attempt_start = self.shared.clock.now_nanos();
        ctx.phase = Phase::Selecting;
        Ok(PeerStep::PassThrough)
    }

    fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        ctx: &mut ObsCtx,
    ) -> Result<()> {
        self.attempt_reached(ctx, peer, Some(reused));
        Ok(())
    }

    fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ObsCtx,
    ) -> Result<()> {
        // A client's id is in the upstream head already (it is the client's head).
        if let Some(&RequestId::Made(id)) = ctx.request_id_ref() {
            if let Some(name) = &self.shared.request_id_text {
                upstream_request.insert_header(name.clone(), trace::id_value(id))?;
            }
        }
        if let Some(t) = ctx.trace() {
            upstream_request.insert_header(TRACEPARENT_NAME, t.traceparent())?;
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
        peer: &HttpPeer,
        ctx: &mut ObsCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.attempt_reached(ctx, peer, None);
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
        let clock = &self.shared.clock;
        let now = clock.now_nanos();
        let latency = Duration::from_nanos(now.saturating_sub(ctx.start));
        let status = session.response_written().map(|h| h.status);
        // No head written: the client left (nginx's 499).
        let status_label = status.map_or("499", labels::status);
        let req = session.req_header();
        let method = labels::method(&req.method);
        let named;
        let route = match req.extensions.get::<RouteLabel>() {
            Some(r) => Some(&*r.0),
            None => {
                named = self.shared.route_of.as_ref().and_then(|r| r.route_of(req));
                named.as_deref()
            }
        };
        if let Some(m) = &self.shared.metrics {
            let now = clock.instant(now);
            m.record_request(method, status_label, route.unwrap_or(""), latency, now);
        }
        let code = status.map_or(499, |s| s.as_u16());
        if let Some(span) = ctx.enabled_span() {
            span.record("http.route", route)
                .record("http.response.status_code", code)
                .record("latency_ms", millis_f64(latency))
                .record("server.address", ctx.upstream.as_deref())
                .record("attempts", ctx.attempts);
        }
        if let Some(log) = &self.shared.access_log {
            let client = session.client_addr().and_then(|a| a.as_inet()).copied();
            log.write_request(&super::RequestLine {
                client,
                method,
                target: &req.uri,
                status: code,
                bytes: Some(session.body_bytes_sent() as u64),
                duration: latency,
                upstream: ctx.upstream.as_deref(),
                attempts: Some(ctx.attempts),
                request_id: ctx.request_id_ref(),
                error: e.map(|e| e as &dyn std::fmt::Display),
            });
            return;
        }
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            parent: ctx.enabled_span().and_then(Span::id),
            client = session.client_addr().map(|a| tracing::field::display(ClientAddr(a))),
            method,
            target = tracing::field::display(&req.uri),
            status = code,
            bytes = session.body_bytes_sent(),
            duration_ms = millis_f64(latency),
            upstream = ctx.upstream.as_deref(),
            attempts = ctx.attempts,
            request_id = ctx.request_id_ref().map(tracing::field::display),
            error = e.map(tracing::field::display),
            "request"
        );
    }
}

/// The client's address for the access log: an IP one through [`LogAddr`](super::LogAddr)
/// (cheaper than `SocketAddr`'s own `Display`), a Unix one as Pingora shows it.
struct ClientAddr<'a>(&'a pingora_core::protocols::l4::socket::SocketAddr);

impl std::fmt::Display for ClientAddr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_inet() {
            Some(inet) => super::LogAddr(*inet).fmt(f),
            None => self.0.fmt(f),
        }
    }
}

/// `traceparent` for Pingora's `insert_header`, which copies a `HeaderName`'s text on every
/// call but takes a static string as is.
const TRACEPARENT_NAME: &str = "traceparent";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_labels_past_the_bound_share_one() {
        let labels = BackendLabels::default();
        let peer = |n: usize| {
            let addr = SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 80));
            HttpPeer::new(addr, false, String::new())
        };
        for n in 0..MAX_BACKEND_LABELS {
            assert_eq!(&*labels.get(&peer(n)), peer(n).address().to_string());
        }
        assert_eq!(&*labels.get(&peer(MAX_BACKEND_LABELS)), "_OTHER");
        assert_eq!(&*labels.get(&peer(MAX_BACKEND_LABELS + 1)), "_OTHER");
        assert_eq!(
            &*labels.get(&peer(3)),
            "10.0.0.3:80",
            "known ones keep theirs"
        );
    }
}
