//! [`RoutingProxy`]: the base `ProxyHttp` (routing, balancing, failover) that the request
//! deadline and the `.middleware(..)` layers wrap: its `ProxyHttp` impl and the routing
//! helpers. Its per-request state is in `ctx.rs`, its headers in `forwarded.rs`, its error
//! answers in `failure.rs`, its per-attempt timeouts in `timeouts.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::Version;
use middlewares::proxy_host::{response_started, retry_decided};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::authority::{is_http_family_scheme, raw_target_authority, RawTargetAuthority};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::ctx::{ProxyCtx, RouteState};
use super::failure::{self, NO_BACKEND_LEFT};
use super::forwarded;
use super::route::RouteTable;
use super::timeouts::Timeouts;
use super::upstream::{CompiledHashKey, UpstreamGroup};
use crate::http_head::head_size;
use middlewares::canonical::{self, PathOptions, Rejected};
use middlewares::obs::RouteOf;

/// How requests are cleaned up before routing and forwarding (set on the builder).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hygiene {
    /// Path normalisation switches.
    pub(crate) path: PathOptions,
    /// Pass client-sent `Forwarded` and `X-Real-IP` on instead of removing them.
    pub(crate) keep_client_forwarded: bool,
}

/// The base proxy: routes, balances, fails over and forwards. Cheap to clone (one `Arc`).
///
/// Per request, in Pingora's phase order:
/// 1. `request_filter` answers a request head over
///    [`max_header_bytes`](super::ProxyBuilder::max_header_bytes) `431`, then brings the host and path to their canonical form (see
///    [`Route`](super::Route#canonical-request-target)) and picks the route by them; a host or
///    path that cannot be read unambiguously → `400`, no match → `404`, both from the proxy.
/// 2. `upstream_peer` picks a backend (see the contract below) and sets the attempt's timeouts:
///    connect, read and write idle, and the time to the response head when configured (see
///    [`ProxyBuilder::upstream_response_timeout`](super::ProxyBuilder::upstream_response_timeout)).
/// 3. `upstream_request_filter` sends the canonical path (origin-form, query unchanged) and
///    the canonical `Host` (the backend's when the upstream says
///    [`preserve_host(false)`](super::Upstream::preserve_host)), removes client-sent
///    `Forwarded` and `X-Real-IP`, appends the client IP to `X-Forwarded-For` and sets
///    `X-Forwarded-Proto` and `X-Forwarded-Host` (canonical). `X-Forwarded-For` keeps what the
///    client sent in front of the entry this proxy adds, so an upstream that trusts it must
///    trust this proxy's own clients too, or read only the last entry.
/// 4. `upstream_response_filter` refuses a response head later than the attempt's response
///    timeout (an upstream read timeout).
/// 5. `fail_to_connect` (refused, connect timeout: nothing was sent) marks the error
///    retryable while an untried healthy backend is left, so Pingora
///    calls `upstream_peer` again. `error_while_proxy` retries an idempotent request with its
///    body within the retry buffer on an untried backend (a stale pooled connection on a fresh
///    one to the same backend), never once any part of the response went downstream and never
///    for the client's own errors.
/// 6. `fail_to_proxy` answers `502`, `504` (upstream timeouts; a passed request deadline
///    arrives as `504` from the timeout policy), `404` (no route) with a short text body.
///
/// The request deadline is not this type's: the builder wraps it in a timeout policy
/// ([`ProxyBuilder::request_timeout`](super::ProxyBuilder::request_timeout)), which stamps the
/// deadline, clamps each attempt's timeouts to what is left, withdraws any retry and refuses
/// any new attempt past it, cuts an upload or a body still streaming then, and answers `504`.
///
/// # The `upstream_peer` contract (for wrapping layers)
/// Within one attempt, every call to `upstream_peer` returns the **next healthy backend not yet
/// offered in this attempt**, chosen by the route's balancer (weighted round robin or
/// consistent hashing), or an error of type [`NO_BACKEND_LEFT`] when none is left
/// (`HTTPStatus(404)` when no route matches, `HTTPStatus(400)` for an unreadable target).
/// So a layer that rejects a peer (an open circuit breaker) simply calls the inner
/// `upstream_peer` again, and the calls end.
///
/// A new attempt starts after `fail_to_connect` or `error_while_proxy` (Pingora retries by
/// calling `upstream_peer` again). It prefers backends this request has not tried at all, but
/// may return one tried in an earlier attempt, so a retry layer can retry a single backend.
/// After a failure on a *reused* pooled connection that Pingora's default policy retries, the
/// next attempt returns the same backend (a fresh connection is the remedy for a stale one).
///
/// The context ([`ProxyCtx`]) exposes the route, current backend and attempt count.
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
    /// One per route, same index: inserted into each routed request's extensions as its
    /// `http_route` label when the proxy records metrics.
    route_labels: Option<Arc<[Arc<str>]>>,
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
        route_labels: Option<Arc<[Arc<str>]>>,
    ) -> Self {
        RoutingProxy {
            shared: Arc::new(Shared {
                table,
                groups: groups.into_boxed_slice(),
                timeouts,
                max_header_bytes,
                forwarded_headers,
                hygiene,
                route_labels,
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
        let (found, host, path) = self.lookup(req)?;
        ctx.host = host.filter(|h| h.changed()).map(|h| h.as_str().into());
        if let std::borrow::Cow::Owned(path) = path {
            ctx.path = Some(path.into_boxed_str());
        }
        Ok(found)
    }

    /// The route of `req` from its canonical host and path, and those.
    #[allow(clippy::type_complexity)]
    fn lookup<'r>(
        &self,
        req: &'r RequestHeader,
    ) -> Result<
        (
            Option<usize>,
            Option<canonical::Authority<'r>>,
            std::borrow::Cow<'r, str>,
        ),
        Rejected,
    > {
        let host = request_host(req)?.map(canonical::authority).transpose()?;
        let path = self.canonical_path(req)?;
        let found = self
            .shared
            .table
            .find(host.as_ref().map(canonical::Authority::name), &path);
        Ok((found, host, path))
    }

    /// The request's path, canonical (the target must be ASCII).
    fn canonical_path<'r>(
        &self,
        req: &'r RequestHeader,
    ) -> Result<std::borrow::Cow<'r, str>, Rejected> {
        if !req.raw_path_is_utf8() {
            return Err(Rejected("request target is not ASCII"));
        }
        canonical::path(req.uri.path(), self.shared.hygiene.path)
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

/// The route's name for the `obs` layer, looked up again at logging: carrying it in the
/// request's extensions would allocate that map on every request and copy it into every
/// upstream request (six allocations, more than this lookup costs).
impl RouteOf for RoutingProxy {
    fn route_of(&self, req: &RequestHeader) -> Option<Arc<str>> {
        let labels = self.shared.route_labels.as_ref()?;
        let found = if self.shared.table.names_hosts() {
            self.lookup(req).ok()?.0
        } else {
            // No route names a host: the path alone decides (a request refused for a malformed
            // host is then labelled with its path's route, as a refused `429` is).
            let path = self.canonical_path(req).ok()?;
            self.shared.table.find(None, &path)
        };
        labels.get(found?).cloned()
    }
}

#[async_trait]
impl ProxyHttp for RoutingProxy {
    type CTX = ProxyCtx;

    fn new_ctx(&self) -> ProxyCtx {
        ProxyCtx::default()
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

    /// The next untried healthy backend (see the type's docs), with the attempt's timeouts.
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

        let mut peer = HttpPeer::new(backend.addr, backend.tls, backend.sni.clone());
        if let Some(tls) = &group.peer_tls {
            tls.apply(&mut peer);
        }
        self.shared
            .timeouts
            .apply(&mut peer, &mut ctx.response_timeout);
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
            forwarded::strip_client_forwarded(upstream_request);
        }
        let client_host = canonical_host(session.req_header(), ctx);
        if self.shared.forwarded_headers {
            forwarded::add(session, upstream_request, client_host.as_ref())?;
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

    /// Refuses a response head that came later than
    /// [`upstream_response_timeout`](super::ProxyBuilder::upstream_response_timeout) after the
    /// attempt started (an upstream read timeout: failover for what may be retried, else `504`).
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut ProxyCtx,
    ) -> Result<()> {
        ctx.response_timeout.head_arrived()
    }

    /// Nothing reached the backend: retry on another one while one is left. (A request deadline
    /// is the timeout policy's: it withdraws the retry once the deadline passed.)
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut ProxyCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.attempt_failed = true;
        let retry = self.has_untried(ctx);
        tracing::debug!(backend = %peer, error = %e, retry, "upstream connect failed");
        e.set_retry(retry);
        e
    }

    /// Retries only what is safe to send again: an idempotent request whose body Pingora still
    /// holds in full, when no byte of the response went downstream (another answer would be
    /// spliced onto it) and the error is not the client's (the timeout policy withdraws a retry
    /// past the request deadline). A failure
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
            && !response_started(session)
            // The client went away or misbehaved: nothing to retry for.
            && e.esource() != &ErrorSource::Downstream;
        let retry = if !safe {
            false
        } else if client_reused && retry_decided(&e, true) {
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
        failure::respond(session, e, ctx).await
    }
}
