//! Access control: allow or deny requests by client IP or network, path prefix, method and
//! host, answering `403 Forbidden`.
//!
//! # Evaluation order
//! Rules are checked **in the order given and the first rule that matches decides** (nginx's
//! `allow`/`deny`); when none matches, the [default action](AclBuilder::default_action)
//! applies (allow, unless set). A rule matches when every condition it has holds; a condition
//! with several values holds when any of them does; a rule without conditions matches
//! everything (`Rule::deny()` last is nginx's `deny all;`). `docs/acl.md` has the
//! nginx-equivalent table.
//!
//! # Paths
//! Path prefixes are compared with the request's **canonical path**, computed by the one
//! canonicaliser the proxy's router uses ([`canonical`](crate::canonical)): unreserved `%XX`
//! escapes decoded, dot segments removed, and here runs of `/` always merged. So `/%61dmin`,
//! `/x/../admin`, `/./admin` and `//admin` all meet a rule on `/admin`, in the proxy and in
//! an axum app alike, whatever the router or backend would do with them. A path that has no
//! unambiguous reading (an encoded `/`, `\` or NUL, a bad escape) is answered `400` as soon as
//! a rule needs to read it. A prefix matches whole segments (`/admin` covers `/admin` and
//! `/admin/x`, not `/administrator`), like [`Route`]s do.
//!
//! **Case**: paths are case-sensitive, as in the router and on most servers: `/ADMIN` does not
//! meet a rule on `/admin`. For a backend that serves paths case-insensitively (IIS, some
//! static file servers), turn on [`ignore_path_case`](AclBuilder::ignore_path_case).
//!
//! Hosts are compared in canonical form too (lowercase, no port, no trailing dot), from `Host`
//! or else the request target's authority, as the router reads them.
//!
//! # Client address
//! The client is the socket peer: in the proxy, the session's; in a tower app, from the
//! request extensions ([`RequestInfo::connection_ip`]: axum's `ConnectInfo`, or the address
//! `pingora_tower::ServeTower` inserts). Behind other proxies, name their networks with
//! [`trusted_proxies`](AclBuilder::trusted_proxies): when the peer is one of them, the
//! `X-Forwarded-For` list is walked from the right, skipping trusted proxies, and the first
//! address that is not one is the client. A peer outside those networks is the client
//! whatever it sends, so a spoofed `X-Forwarded-For` is ignored. IPv4-mapped IPv6 addresses
//! (`::ffff:10.0.0.1`) are compared as IPv4.
//!
//! When the client address is unknown (a tower app served without connect info), an IP
//! condition never holds for an allow rule and always holds for a deny rule: the list fails
//! closed.
//!
//! # Dry run
//! [`dry_run(true)`](AclBuilder::dry_run) evaluates every request, counts what would be denied
//! ([`AclStats::dry_run_denied`]) and logs it at warn level, and serves everything.
//!
//! # Accept-time denial
//! A client that every request would be denied by its address alone can be turned away
//! before any byte is read (no TLS handshake is spent on it): [`AclLayer::denies_at_accept`]
//! answers that, and `pingora_tower`'s server installs it as Pingora's connection filter
//! (`ProxyBuilder::acl`). Requests are still checked by the layer.
//!
//! # Hosts
//! The tower host decides in `call` and answers the refusal without calling the inner
//! service; the proxy host decides in `request_filter`, before peer selection and any upstream
//! work. Both call [`AclLayer::check`] and render [`Denied`] through
//! [`Rejection`](crate::Rejection). Pingora runs every layer's admission before peer
//! selection, so in a proxy the ACL refuses before a rate limiter inside it counts the request
//! only if the ACL is the outer layer: put it first.
//!
//! [`Route`]: https://docs.rs/pingora-tower/latest/pingora_tower/proxy/struct.Route.html
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use std::net::SocketAddr;
//! use http::{Request, Response, StatusCode};
//! use middlewares::acl::{Action, AclLayer, Rule};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let acl = AclLayer::builder()
//!     .rule(Rule::allow().ip("10.0.0.0/8").path_prefix("/admin"))
//!     .rule(Rule::deny().path_prefix("/admin"))
//!     .deny_ip("192.0.2.0/24")
//!     .default_action(Action::Allow)
//!     .build()
//!     .expect("valid access list");
//! let svc = ServiceBuilder::new()
//!     .layer(acl)
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//! let from = |peer: [u8; 4], path: &str| {
//!     let mut req = Request::get(path).body(String::new()).unwrap();
//!     req.extensions_mut().insert(SocketAddr::from((peer, 4711)));
//!     req
//! };
//! let res = svc.clone().oneshot(from([10, 1, 2, 3], "/admin/users")).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let res = svc.clone().oneshot(from([203, 0, 113, 9], "/x/../%61dmin")).await.unwrap();
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! let res = svc.oneshot(from([192, 0, 2, 1], "/")).await.unwrap();
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! # }
//! ```

mod cidr;
mod client;
mod error;
pub mod future;
mod layer;
#[cfg(feature = "pingora")]
mod proxy;
mod rule;

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

pub use self::cidr::{Cidr, InvalidCidr};
pub use self::client::X_FORWARDED_FOR;
pub use self::error::{Denied, DenyReason};
pub use self::layer::{AclBuilder, AclLayer, AclStats};
pub use self::rule::{Action, Rule};

use self::future::ResponseFuture;
use crate::{Layered, RequestInfo};

/// Service built by [`AclLayer`]: refuses or passes on each request in `call`.
pub type Acl<S> = Layered<AclLayer, S>;

impl<S> Acl<S> {
    /// Wraps `inner`, checking requests against `layer`'s rules.
    pub const fn new(inner: S, layer: AclLayer) -> Self {
        Layered::wrap(layer, inner)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Acl<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.policy.check(&RequestInfo::from_request(&req), None) {
            Ok(()) => ResponseFuture::called(self.inner.call(req)),
            Err(denied) => ResponseFuture::denied(denied),
        }
    }
}
