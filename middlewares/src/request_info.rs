//! A borrowed view of a request head that key functions and classifiers read.

use std::net::{IpAddr, SocketAddr};

use http::{Extensions, HeaderMap, Method, Uri};

/// The parts of a request that policies look at, borrowed from an `http::Request<B>` of any body
/// type or from a Pingora request header.
///
/// Key functions (rate limiting, keyed breakers) take this rather than `&Request<B>` so one
/// closure works for every body type and for both hosts.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (the client's `SocketAddr` lives here when the server put it there).
    pub extensions: Option<&'a Extensions>,
}

impl<'a> RequestInfo<'a> {
    /// Borrows the head of `req`.
    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        RequestInfo {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: Some(req.extensions()),
        }
    }

    /// Borrows the head from request `Parts` (a Pingora `RequestHeader` dereferences to these).
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        RequestInfo {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: Some(&parts.extensions),
        }
    }

    /// The socket peer's address, as the server put it into the request extensions: axum's
    /// `ConnectInfo<SocketAddr>` (with the `axum` feature), else a `SocketAddr`, else an
    /// `IpAddr`. `None` when the server put none there (an axum app served without
    /// `into_make_service_with_connect_info`).
    pub fn connection_ip(&self) -> Option<IpAddr> {
        let ext = self.extensions?;
        #[cfg(feature = "axum")]
        if let Some(axum::extract::ConnectInfo(addr)) =
            ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(addr.ip());
        }
        if let Some(addr) = ext.get::<SocketAddr>() {
            return Some(addr.ip());
        }
        ext.get::<IpAddr>().copied()
    }
}
