//! [`RoutingProxy`]: the base `ProxyHttp` (routing, balancing, failover, deadline, forwarding
//! headers) that `.middleware(..)` layers wrap, and its per-request [`ProxyCtx`].

use crate::serve::framing::head_size;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, FORWARDED, HOST};
use http::Version;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::authority::{is_http_family_scheme, raw_target_authority, RawTargetAuthority};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tokio::time::Instant;

use super::canonical::{self, PathOptions, Rejected};
use super::route::RouteTable;
use super::upstream::{CompiledHashKey, UpstreamGroup};

/// Default limit on one upstream connection attempt (TCP connect plus TLS handshake).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on one read from / one write to an upstream connection (nginx's
/// `proxy_read_timeout`). A request deadline, when set, shortens it to what is left.
pub const DEFAULT_UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle upstream connection stays in the keep-alive pool.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `upstream_peer` found no healthy backend it had not tried yet for this request (answered
/// `502`). Compare with [`Error::etype`].
pub const NO_BACKEND_LEFT: ErrorType = ErrorType::new("NoBackendLeft");
/// The request deadline set by `with_timeouts(_, request_ms)` passed (answered `504`).
pub const DEADLINE_EXCEEDED: ErrorType = ErrorType::new("RequestDeadlineExceeded");

// Lookups use the `HeaderName`s. Pingora's `insert_header` parses whatever name it is given
// again, and takes a `&'static str` without copying it (a custom `HeaderName` is copied
// first), so inserts use the text the `HeaderName` is made from.
const XFF: &str = "x-forwarded-for";
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static(XFF);
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// How requests are cleaned up before routing and forwarding (set on the builder).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hygiene {
    /// Path normalisation switches.
    pub(crate) path: PathOptions,
    /// Pass client-sent `Forwarded` and `X-Real-IP` on instead of removing them.
    pub(crate) keep_client_forwarded: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) request: Option<Duration>,
    pub(crate) io: Duration,
    pub(crate) idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: None,
            io: DEFAULT_UPSTREAM_IO_TIMEOUT,
            idle: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

/// The base proxy: routes, balances, fails over and forwards. Cheap to clone (one `Arc`).
///
/// Per request, in Pingora's phase order:
/// 1. `early_request_filter` stamps the request deadline (when `request_ms` is set).
/// 2. `request_filter` brings the host and path to their canonical form (see
///    [`Route`](super::Route#canonical-request-target)) and picks the route by them; a host or
///    path that cannot be read unambiguously → `400`, no match → `404`, both from the proxy.
/// 3. `upstream_peer` picks a backend (see the contract below) and sets its timeouts: connect
///    = `connect_ms`, read/write = 60 s, each clamped to what is left of the deadline; `504`
///    once the deadline has passed.
/// 4. `upstream_request_filter` sends the canonical path (origin-form, query unchanged) and
///    the canonical `Host` (the backend's when the upstream says
///    [`preserve_host(false)`](super::Upstream::preserve_host)), removes client-sent
///    `Forwarded` and `X-Real-IP`, appends the client IP to `X-Forwarded-For` and sets
///    `X-Forwarded-Proto` and `X-Forwarded-Host` (canonical). `X-Forwarded-For` keeps what the
///    client sent in front of the entry this proxy adds, so an upstream that trusts it must
///    trust this proxy's own clients too, or read only the last entry.
/// 5. `fail_to_connect` (refused, connect timeout: nothing was sent) marks the error
///    retryable while an untried healthy backend is left and the deadline allows, so Pingora
///    calls `upstream_peer` again. `error_while_proxy` retries an idempotent request with its
///    body within the retry buffer on an untried backend (a stale pooled connection on a fresh
///    one to the same backend), never once any part of the response went downstream and never
///    for the client's own errors.
/// 6. `fail_to_proxy` answers `502`, `504` (deadline, upstream timeouts), `404` (no route) with a
///    short text body.
///
/// # The `upstream_peer` contract (for wrapping layers)
/// Within one attempt, every call to `upstream_peer` returns the **next healthy backend not yet
/// offered in this attempt**, chosen by the route's balancer (weighted round robin or
/// consistent hashing), or an error of type [`NO_BACKEND_LEFT`] when none is left
/// ([`DEADLINE_EXCEEDED`] when the deadline passed, `HTTPStatus(404)` when no route matches).
/// So a layer that rejects a peer (an open circuit breaker) simply calls the inner
/// `upstream_peer` again, and the calls end.
///
/// A new attempt starts after `fail_to_connect` or `error_while_proxy` (Pingora retries by
/// calling `upstream_peer` again). It prefers backends this request has not tried at all, but
/// may return one tried in an earlier attempt, so a retry layer can retry a single backend.
/// After a failure on a *reused* pooled connection that Pingora's default policy retries, the
/// next attempt returns the same backend (a fresh connection is the remedy for a stale one).
///
/// The context ([`ProxyCtx`]) exposes the route, deadline, current backend and attempt count.
#[derive(Clone)]
pub struct RoutingProxy {
    shared: Arc<Shared>,
}

struct Shared {
    table: RouteTable,
    /// One per route, same index.
    groups: Box<[UpstreamGroup]>,
    timeouts: Timeouts,
    /// Larger request heads are answered `431` (Pingora itself accepts up to 1 MiB).
    max_header_bytes: usize,
    /// Whether `X-Forwarded-For/-Proto/-Host` are set on upstream requests.
    forwarded_headers: bool,
    hygiene: Hygiene,
}

impl std::fmt::Debug for RoutingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingProxy")
            .field("routes", &self.shared.table)
            .field("upstreams", &self.shared.groups)
            .field("timeouts", &self.shared.timeouts)
            .finish()
    }
}

/// The health of one backend, from [`RoutingProxy::backends`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStatus {
    /// Index of the route (in the order routes were given) whose upstream has this backend.
    pub route: usize,
    /// The backend URL as configured.
    pub url: String,
    /// The resolved address traffic goes to.
    pub addr: SocketAddr,
    /// The configured weight.
    pub weight: u32,
    /// Whether the balancer sends traffic to it (always `true` without a health check).
    pub healthy: bool,
}

impl RoutingProxy {
    pub(crate) fn new(
        table: RouteTable,
        groups: Vec<UpstreamGroup>,
        timeouts: Timeouts,
        max_header_bytes: usize,
        forwarded_headers: bool,
        hygiene: Hygiene,
    ) -> Self {
        RoutingProxy {
            shared: Arc::new(Shared {
                table,
                groups: groups.into_boxed_slice(),
                timeouts,
                max_header_bytes,
                forwarded_headers,
                hygiene,
            }),
        }
    }

    /// Every backend of every route with its current health.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let mut out = Vec::new();
        for (route, group) in self.shared.groups.iter().enumerate() {
            for (i, b) in group.backends.iter().enumerate() {
                out.push(BackendStatus {
                    route,
                    url: b.url.clone(),
                    addr: b.addr,
                    weight: b.weight,
                    healthy: group.is_ready(i),
                });
            }
        }
        out
    }

    pub(crate) fn groups(&self) -> &[UpstreamGroup] {
        &self.shared.groups
    }

    /// Resolves (once) the route of this request from its canonical host and path, keeping
    /// in `ctx` whichever of the two differs from what the client sent.
    fn route(&self, session: &Session, ctx: &mut ProxyCtx) -> RouteState {
        if let RouteState::Unresolved = ctx.route {
            ctx.route = match self.resolve(session.req_header(), ctx) {
                Ok(Some(i)) => RouteState::Matched(i),
                Ok(None) => RouteState::NoMatch,
                Err(rejected) => RouteState::BadRequest(rejected),
            };
        }
        ctx.route
    }

    fn resolve(&self, req: &RequestHeader, ctx: &mut ProxyCtx) -> Result<Option<usize>, Rejected> {
        let host = request_host(req)?.map(canonical::authority).transpose()?;
        if !req.raw_path_is_utf8() {
            return Err(Rejected("request target is not ASCII"));
        }
        let path = canonical::path(req.uri.path(), self.shared.hygiene.path)?;
        let found = self
            .shared
            .table
            .find(host.as_ref().map(canonical::Authority::name), &path);
        ctx.host = host.filter(|h| h.changed()).map(|h| h.as_str().into());
        if let std::borrow::Cow::Owned(path) = path {
            ctx.path = Some(path.into_boxed_str());
        }
        Ok(found)
    }

    fn stamp_deadline(&self, ctx: &mut ProxyCtx) {
        if ctx.deadline.is_none() {
            if let Some(budget) = self.shared.timeouts.request {
                ctx.deadline = Some(Instant::now() + budget);
            }
        }
    }

    /// Whether a backend this request has not tried yet is healthy.
    fn has_untried(&self, ctx: &ProxyCtx) -> bool {
        let RouteState::Matched(route) = ctx.route else {
            return false;
        };
        let group = &self.shared.groups[route];
        (0..group.backends.len()).any(|i| !ctx.tried.contains(i) && group.is_ready(i))
    }
}

/// The per-request state of [`RoutingProxy`] (its `ProxyHttp::CTX`).
///
/// A wrapping layer's `CTX` holds this one; layers that know the base proxy's type can read it.
#[derive(Debug, Default)]
pub struct ProxyCtx {
    route: RouteState,
    /// The canonical host (with port) when it differs from the client's text.
    host: Option<Box<str>>,
    /// The canonical path when it differs from the client's.
    path: Option<Box<str>>,
    deadline: Option<Instant>,
    tried: Tried,
    /// Backends offered in the current attempt.
    offered: Tried,
    /// The last attempt failed; the next `upstream_peer` call starts a new one.
    attempt_failed: bool,
    current: Option<(usize, SocketAddr)>,
    attempts: u32,
    /// Pingora will retry a failure on a reused connection: give the same backend once more.
    retry_same: bool,
}

#[derive(Debug, Default, Clone, Copy)]
enum RouteState {
    #[default]
    Unresolved,
    NoMatch,
    Matched(usize),
    /// The host or path cannot be read unambiguously (answered `400`).
    BadRequest(Rejected),
}

impl ProxyCtx {
    /// The matched route's index (in the order routes were given), once `request_filter` or
    /// `upstream_peer` ran; `None` before, or when nothing matched.
    pub fn route(&self) -> Option<usize> {
        match self.route {
            RouteState::Matched(i) => Some(i),
            _ => None,
        }
    }

    /// When the request must be done by (set in `early_request_filter` when a request timeout
    /// is configured).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Tightens the deadline to `deadline` if that is earlier (never extends it).
    pub fn shorten_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// Whether the deadline has passed (reads the clock).
    pub fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The backend of the latest `upstream_peer` call.
    pub fn backend(&self) -> Option<SocketAddr> {
        self.current.map(|(_, addr)| addr)
    }

    /// How many times `upstream_peer` returned a backend for this request.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How many distinct backends were tried.
    pub fn tried_backends(&self) -> usize {
        self.tried.len()
    }
}

/// Backend indices already tried: a bit set for the first 64, a list beyond.
#[derive(Debug, Default)]
struct Tried {
    bits: u64,
    more: Vec<usize>,
}

impl Tried {
    fn contains(&self, i: usize) -> bool {
        if i < 64 {
            self.bits & (1 << i) != 0
        } else {
            self.more.contains(&i)
        }
    }

    fn clear(&mut self) {
        self.bits = 0;
        self.more.clear();
    }

    fn insert(&mut self, i: usize) {
        if i < 64 {
            self.bits |= 1 << i;
        } else if !self.more.contains(&i) {
            self.more.push(i);
        }
    }

    fn len(&self) -> usize {
        self.bits.count_ones() as usize + self.more.len()
    }
}

/// The client's authority as sent (not yet canonical):
/// - an absolute-form target's authority (`GET http://a.example.com/ HTTP/1.1`): RFC 9112
///   §3.2.2 lets it win over `Host`; Pingora already refuses a `Host` that differs from it;
/// - else the `Host` header;
/// - else the URI authority (HTTP/2 `:authority`).
///
/// An HTTP/1.1 request with none of them (or an empty `Host`) is refused, as RFC 9112 §3.2
/// requires; HTTP/1.0 and HTTP/2 requests without one route as having no host.
fn request_host(req: &RequestHeader) -> Result<Option<&[u8]>, Rejected> {
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::None => {}
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } if is_http_family_scheme(scheme) => return Ok(Some(authority)),
        RawTargetAuthority::Absolute { .. } => {
            return Err(Rejected(
                "absolute-form target with a scheme other than http",
            ))
        }
        RawTargetAuthority::AmbiguousAuthority => {
            return Err(Rejected("ambiguous absolute-form target"))
        }
    }
    let host = req
        .headers
        .get(HOST)
        .map(HeaderValue::as_bytes)
        .filter(|h| !h.is_empty())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    if host.is_none() && req.version == Version::HTTP_11 {
        return Err(Rejected("HTTP/1.1 request without Host"));
    }
    Ok(host)
}

/// The canonical host with its port, as the upstream's `Host` and `X-Forwarded-Host` carry it.
fn canonical_host(req: &RequestHeader, ctx: &ProxyCtx) -> Option<HeaderValue> {
    if let Some(host) = &ctx.host {
        return HeaderValue::from_str(host).ok();
    }
    // Unchanged: the client's own value (an absolute-form target's authority equals it when
    // both are present).
    match req.headers.get(HOST).filter(|h| !h.is_empty()) {
        Some(host) => Some(host.clone()),
        None => request_host(req)
            .ok()
            .flatten()
            .and_then(|h| HeaderValue::from_bytes(h).ok()),
    }
}

/// The bytes consistent hashing hashes; `path` is the canonical path, `ip` scratch space for
/// the client address.
fn hash_input<'a>(
    key: Option<&CompiledHashKey>,
    session: &'a Session,
    path: &'a str,
    ip: &'a mut [u8; 16],
) -> &'a [u8] {
    match key {
        None => b"",
        Some(CompiledHashKey::Path) => path.as_bytes(),
        Some(CompiledHashKey::Header(name)) => session
            .req_header()
            .headers
            .get(name)
            .map_or(&b""[..], HeaderValue::as_bytes),
        Some(CompiledHashKey::ClientIp) => {
            match session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
            {
                Some(IpAddr::V4(v4)) => {
                    ip[..4].copy_from_slice(&v4.octets());
                    &ip[..4]
                }
                Some(IpAddr::V6(v6)) => {
                    *ip = v6.octets();
                    &ip[..]
                }
                None => b"",
            }
        }
    }
}

fn deadline_error() -> Box<Error> {
    Error::explain(DEADLINE_EXCEEDED, "request deadline passed").into_up()
}

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
fn status_for(e: &Error, ctx: &ProxyCtx) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        t if *t == DEADLINE_EXCEEDED => 504,
        t => match e.esource() {
            ErrorSource::Downstream => match t {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            // A read that timed out because upstream_peer clamped it to the deadline is a
            // deadline expiry too.
            ErrorSource::Upstream if is_timeout(t) || ctx.deadline_passed() => 504,
            ErrorSource::Upstream => 502,
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[async_trait]
impl ProxyHttp for RoutingProxy {
    type CTX = ProxyCtx;

    fn new_ctx(&self) -> ProxyCtx {
        ProxyCtx::default()
    }

    /// Stamps the request deadline, before any other phase can spend its time.
    async fn early_request_filter(&self, _session: &mut Session, ctx: &mut ProxyCtx) -> Result<()> {
        self.stamp_deadline(ctx);
        Ok(())
    }

    /// Resolves the route from the canonical host and path; `Ok(true)` (done) after answering
    /// `400` when they cannot be read unambiguously, `404` when no route matches.
    async fn request_filter(&self, session: &mut Session, ctx: &mut ProxyCtx) -> Result<bool> {
        if head_size(session.req_header()) > self.shared.max_header_bytes {
            tracing::debug!(
                limit = self.shared.max_header_bytes,
                "request head too large"
            );
            session.respond_error(431).await?;
            return Ok(true);
        }
        match self.route(session, ctx) {
            RouteState::Matched(_) => return Ok(false),
            RouteState::BadRequest(why) => {
                tracing::debug!(reason = why.0, "request target refused");
                session
                    .respond_error_with_body(
                        400,
                        Bytes::from_static(b"400 Bad Request: malformed host or path\n"),
                    )
                    .await?;
            }
            RouteState::NoMatch | RouteState::Unresolved => {
                tracing::debug!(path = session.req_header().uri.path(), "no route");
                session
                    .respond_error_with_body(404, Bytes::from_static(b"404 Not Found: no route\n"))
                    .await?;
            }
        }
        Ok(true)
    }

    /// Aborts an upload that outlives the request deadline.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut ProxyCtx,
    ) -> Result<()> {
        if ctx.deadline_passed() {
            return Err(deadline_error());
        }
        Ok(())
    }

    /// The next untried healthy backend (see the type's docs), with timeouts clamped to the
    /// deadline.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = match self.route(session, ctx) {
            RouteState::Matched(route) => route,
            RouteState::BadRequest(why) => {
                return Err(Error::explain(ErrorType::HTTPStatus(400), why.0))
            }
            RouteState::NoMatch | RouteState::Unresolved => {
                return Err(Error::explain(ErrorType::HTTPStatus(404), "no route"))
            }
        };
        // A wrapping layer may have answered early_request_filter itself.
        self.stamp_deadline(ctx);
        let remaining = match ctx.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(deadline_error());
                }
                Some(left)
            }
            None => None,
        };
        let group = &self.shared.groups[route];
        if std::mem::take(&mut ctx.attempt_failed) {
            ctx.offered.clear();
        }

        let same = std::mem::take(&mut ctx.retry_same)
            .then_some(ctx.current)
            .flatten()
            .map(|(i, _)| i)
            .filter(|&i| group.is_ready(i));
        let index = match same {
            Some(i) => i,
            None => {
                let mut ip = [0u8; 16];
                let path = ctx.path.as_deref();
                let path = path.unwrap_or_else(|| session.req_header().uri.path());
                let key = hash_input(group.hash_key.as_ref(), session, path, &mut ip);
                let (tried, offered) = (&ctx.tried, &ctx.offered);
                let fresh = group.select(key, |i| !tried.contains(i) && !offered.contains(i));
                match fresh.or_else(|| group.select(key, |i| !offered.contains(i))) {
                    Some(i) => i,
                    None => {
                        let why = if ctx.attempts == 0 {
                            "no healthy backend"
                        } else {
                            "every healthy backend was tried"
                        };
                        return Err(Error::explain(
                            NO_BACKEND_LEFT,
                            format!("upstream {}: {why}", group.label),
                        )
                        .into_up());
                    }
                }
            }
        };
        let backend = &group.backends[index];
        ctx.tried.insert(index);
        ctx.offered.insert(index);
        ctx.current = Some((index, backend.addr));
        ctx.attempts += 1;

        let t = &self.shared.timeouts;
        let clamp = |d: Duration| Some(remaining.map_or(d, |left| d.min(left)));
        let mut peer = HttpPeer::new(backend.addr, backend.tls, backend.sni.clone());
        peer.options.connection_timeout = clamp(t.connect);
        peer.options.total_connection_timeout = clamp(t.connect);
        peer.options.read_timeout = clamp(t.io);
        peer.options.write_timeout = clamp(t.io);
        peer.options.idle_timeout = Some(t.idle);
        Ok(Box::new(peer))
    }

    /// Sends the upstream what was routed and says who asked:
    /// - the canonical path (when it differs from the client's, or the client used
    ///   absolute-form: the upstream gets origin-form), the query string unchanged;
    /// - the canonical `Host` (the client's own text when already canonical), or the
    ///   backend's for [`preserve_host(false)`](super::Upstream::preserve_host);
    /// - client-sent `Forwarded` and `X-Real-IP` removed (the proxy cannot vouch for them)
    ///   unless [`keep_client_forwarded`](super::ProxyBuilder::keep_client_forwarded) is set;
    /// - with [`forwarded_headers`](super::ProxyBuilder::forwarded_headers): the client IP
    ///   appended to `X-Forwarded-For`, `X-Forwarded-Proto` and the canonical
    ///   `X-Forwarded-Host` set.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ProxyCtx,
    ) -> Result<()> {
        let req = session.req_header();
        let absolute = matches!(
            raw_target_authority(req.raw_path()),
            RawTargetAuthority::Absolute { .. }
        );
        if ctx.path.is_some() || absolute {
            let path = ctx.path.as_deref().unwrap_or_else(|| req.uri.path());
            let target = match req.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            };
            upstream_request.set_raw_path(target.as_bytes())?;
        }
        if !self.shared.hygiene.keep_client_forwarded {
            // Looked up first: removing costs more than finding nothing.
            if upstream_request.headers.contains_key(FORWARDED) {
                upstream_request.remove_header(&FORWARDED);
            }
            if upstream_request.headers.contains_key(X_REAL_IP) {
                upstream_request.remove_header(&X_REAL_IP);
            }
        }

        let forwarded = self.shared.forwarded_headers;
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .filter(|_| forwarded)
        {
            // Appended to, not replaced: an upstream that trusts this header must trust
            // whoever connects to this proxy to have written the earlier entries.
            let mut forwarded = String::new();
            for earlier in upstream_request.headers.get_all(X_FORWARDED_FOR) {
                if let Ok(earlier) = earlier.to_str() {
                    forwarded.push_str(earlier);
                    forwarded.push_str(", ");
                }
            }
            forwarded.push_str(&ip.to_string());
            upstream_request.insert_header(XFF, forwarded)?;
        }
        if forwarded {
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            upstream_request
                .insert_header(X_FORWARDED_PROTO, if tls { "https" } else { "http" })?;
        }

        let client_host = canonical_host(session.req_header(), ctx);
        if let Some(host) = client_host.as_ref().filter(|_| forwarded) {
            upstream_request.insert_header(X_FORWARDED_HOST, host.clone())?;
        }
        let group = ctx.route().map(|r| &self.shared.groups[r]);
        let backend = ctx
            .current
            .zip(group)
            .map(|((i, _), g)| (&g.backends[i], g.preserve_host));
        match (backend, client_host) {
            (Some((b, false)), _) => upstream_request.insert_header(HOST, b.authority.clone())?,
            // A rewritten Host replaces the client's; an HTTP/2 or absolute-form client may
            // send no Host header, and an HTTP/1.1 upstream needs one.
            (_, Some(host))
                if ctx.host.is_some() || upstream_request.headers.get(HOST).is_none() =>
            {
                upstream_request.insert_header(HOST, host)?
            }
            _ => {}
        }
        Ok(())
    }

    /// Cuts a response body that outlives the request deadline.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut ProxyCtx,
    ) -> Result<Option<Duration>> {
        if ctx.deadline_passed() {
            return Err(deadline_error());
        }
        Ok(None)
    }

    /// Nothing reached the backend: retry on another one while one is left and time allows.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut ProxyCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.attempt_failed = true;
        let retry = !ctx.deadline_passed() && self.has_untried(ctx);
        tracing::debug!(backend = %peer, error = %e, retry, "upstream connect failed");
        e.set_retry(retry);
        e
    }

    /// Retries only what is safe to send again: an idempotent request whose body Pingora still
    /// holds in full, when no byte of the response went downstream (another answer would be
    /// spliced onto it) and the error is not the client's; never past the deadline. A failure
    /// on a reused pooled connection that Pingora judges stale goes to the same backend on a
    /// fresh connection; any other goes to a backend not tried yet, while one is left.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut ProxyCtx,
        client_reused: bool,
    ) -> Box<Error> {
        ctx.attempt_failed = true;
        let mut e = e.more_context(format!("Peer: {peer}"));
        let safe = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            // Part of the response went downstream: another attempt would splice a second
            // upstream answer onto it.
            && session.response_written().is_none()
            && session.body_bytes_sent() == 0
            // The client went away or misbehaved: nothing to retry for.
            && e.esource() != &ErrorSource::Downstream;
        let retry = if !safe || ctx.deadline_passed() {
            false
        } else if client_reused && e.retry() {
            // A stale pooled connection (Pingora's judgement): the same backend, fresh.
            ctx.retry_same = true;
            true
        } else {
            // Failover: an idempotent request whose answer has not started goes to a backend
            // this request has not tried, whether or not the upstream saw it.
            self.has_untried(ctx)
        };
        e.set_retry(retry);
        e
    }

    /// Answers `404`/`502`/`504` (or the status of an `HTTPStatus` error) with a short body.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ProxyCtx,
    ) -> FailToProxy {
        let code = status_for(e, ctx);
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
                attempts = ctx.attempts,
                "proxy error"
            );
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_set_spills_past_64() {
        let mut t = Tried::default();
        for i in [0, 5, 63, 64, 200, 200] {
            t.insert(i);
        }
        assert!(t.contains(0) && t.contains(63) && t.contains(64) && t.contains(200));
        assert!(!t.contains(1) && !t.contains(65));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn statuses() {
        let ctx = ProxyCtx::default();
        let up = |t| Error::explain(t, "x").into_up();
        assert_eq!(status_for(&up(ErrorType::ConnectRefused), &ctx), 502);
        assert_eq!(status_for(&up(ErrorType::ReadTimedout), &ctx), 504);
        assert_eq!(status_for(&up(NO_BACKEND_LEFT), &ctx), 502);
        assert_eq!(status_for(&deadline_error(), &ctx), 504);
        assert_eq!(
            status_for(&Error::explain(ErrorType::HTTPStatus(404), "x"), &ctx),
            404
        );
        let down = Error::explain(ErrorType::ReadError, "x").into_down();
        assert_eq!(status_for(&down, &ctx), 0);
    }
}
