//! `pingora-plain`: the baseline of the proxy bench. A minimal hand-written Pingora `ProxyHttp`
//! that sends every request to one upstream: no routing, no added headers, no layers, no
//! logging; Pingora's upstream keep-alive pool on (128 idle connections, like `PingoraProxy`).
//!
//! ```text
//! pingora-plain [--listen 127.0.0.1:19001] [--upstream 127.0.0.1:19000]
//!               [--host spawn|server] [--workers 1] [--pool 128]
//!               [--forwarded-headers no|yes|lean] [--peer-timeouts no|yes]
//!               [--tls-cert cert.pem --tls-key key.pem]
//! ```
//! With `--tls-cert` and `--tls-key` (`--host spawn` only) the listener terminates TLS with
//! `pingora_tower::server::spawn_with` and `ListenOptions::tls`, the listener `PingoraProxy` uses.
//! - `--host spawn` (default): served by `pingora_tower::server::spawn` on a multi-thread tokio
//!   runtime with `--workers` worker threads (`0` = current-thread), the same host and runtime
//!   as `pingora-tower-proxy`, so the two differ only in the `ProxyHttp` they run.
//! - `--host server`: Pingora's own `Server` (`threads = --workers`, work stealing on), to check
//!   that the in-process host costs nothing against Pingora's.
//!
//!
//! Two what-if switches (off by default) add, one at a time, work `PingoraProxy`'s
//! `RoutingProxy` does per request, written the same way, so the instruction counts can tell
//! what each costs:
//! - `--forwarded-headers yes`: `X-Forwarded-For` (appending the client IP), `X-Forwarded-Proto`
//!   and `X-Forwarded-Host` in `upstream_request_filter`; `lean`: the same headers written
//!   without the `String` building, the IP's `to_string` and the header-name parsing;
//! - `--peer-timeouts yes`: the peer's connect (5 s), read and write (60 s) timeouts and its pool
//!   idle timeout (60 s).
//!
//! Prints `listening on ADDR` once bound; stops on SIGINT or SIGTERM.

#[path = "../common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};

const USAGE: &str = "pingora-plain [--listen 127.0.0.1:19001] [--upstream 127.0.0.1:19000] \
                     [--host spawn|server] [--workers 1] [--pool 128] \
                     [--forwarded-headers no|yes|lean] [--peer-timeouts no|yes] \
                     [--tls-cert cert.pem --tls-key key.pem]";

/// One upstream, nothing else (unless a what-if switch is on).
struct Plain {
    upstream: SocketAddr,
    forwarded_headers: Forwarded,
    peer_timeouts: bool,
}

/// Whether and how `upstream_request_filter` adds the `X-Forwarded-*` headers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Forwarded {
    No,
    AsRoutingProxy,
    Lean,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.peer_timeouts {
            let (connect, io) = (Duration::from_secs(5), Duration::from_secs(60));
            peer.options.connection_timeout = Some(connect);
            peer.options.total_connection_timeout = Some(connect);
            peer.options.read_timeout = Some(io);
            peer.options.write_timeout = Some(io);
            peer.options.idle_timeout = Some(io);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> pingora_core::Result<()> {
        match self.forwarded_headers {
            Forwarded::No => Ok(()),
            Forwarded::AsRoutingProxy => add_forwarded_headers(session, upstream_request),
            Forwarded::Lean => add_forwarded_headers_lean(session, upstream_request),
        }
    }
}

/// The `X-Forwarded-*` headers, written as `RoutingProxy::upstream_request_filter` writes them.
fn add_forwarded_headers(
    session: &Session,
    upstream_request: &mut RequestHeader,
) -> pingora_core::Result<()> {
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        let mut forwarded = String::new();
        for earlier in upstream_request.headers.get_all("x-forwarded-for") {
            if let Ok(earlier) = earlier.to_str() {
                forwarded.push_str(earlier);
                forwarded.push_str(", ");
            }
        }
        forwarded.push_str(&ip.to_string());
        upstream_request.insert_header("x-forwarded-for", forwarded)?;
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    upstream_request.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    if let Some(host) = session
        .req_header()
        .headers
        .get(http::header::HOST)
        .cloned()
    {
        upstream_request.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// The same headers with less work: a stack buffer instead of a `String`, no `to_string`,
/// constant header names, the first earlier `X-Forwarded-For` only.
fn add_forwarded_headers_lean(
    session: &Session,
    upstream_request: &mut RequestHeader,
) -> pingora_core::Result<()> {
    use std::io::Write as _;
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        let mut buf = [0u8; 256];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        if let Some(earlier) = upstream_request.headers.get(X_FORWARDED_FOR) {
            let _ = cursor.write_all(earlier.as_bytes());
            let _ = cursor.write_all(b", ");
        }
        let _ = write!(cursor, "{ip}");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        if let Ok(value) = HeaderValue::from_bytes(&buf[..len]) {
            upstream_request.insert_header(X_FORWARDED_FOR, value)?;
        }
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    upstream_request.insert_header(X_FORWARDED_PROTO, proto)?;
    if let Some(host) = session
        .req_header()
        .headers
        .get(http::header::HOST)
        .cloned()
    {
        upstream_request.insert_header(X_FORWARDED_HOST, host)?;
    }
    Ok(())
}

fn yes_no(args: &common::Args, key: &str) -> Result<bool, common::BoxError> {
    match args.get(key, "no").as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(format!("--{key} {other:?}: expected yes or no").into()),
    }
}

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let listen = args.get("listen", "127.0.0.1:19001");
    let upstream: SocketAddr = args.parse_or("upstream", ([127, 0, 0, 1], 19000).into());
    let workers: usize = args.parse_or("workers", 1);
    let conf = ServerConf {
        upstream_keepalive_pool_size: args.parse_or("pool", 128),
        threads: workers.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let proxy = Plain {
        upstream,
        forwarded_headers: match args.get("forwarded-headers", "no").as_str() {
            "no" => Forwarded::No,
            "yes" => Forwarded::AsRoutingProxy,
            "lean" => Forwarded::Lean,
            other => return Err(format!("--forwarded-headers {other:?}: no, yes or lean").into()),
        },
        peer_timeouts: yes_no(&args, "peer-timeouts")?,
    };
    match args.get("host", "spawn").as_str() {
        "spawn" => common::runtime(workers)?.block_on(async move {
            let app = pingora_proxy::http_proxy(&Arc::new(conf), proxy);
            let running = match common::tls_config(&args)? {
                Some(tls) => {
                    let options = pingora_tower::server::ListenOptions::new().tls(tls);
                    pingora_tower::server::spawn_with(&listen, app, options).await?
                }
                None => pingora_tower::server::spawn(&listen, app).await?,
            }
            .with_shutdown_grace(Duration::from_secs(2));
            println!("listening on {}", running.local_addr());
            common::stop_signal().await?;
            running.shutdown().await;
            Ok(())
        }),
        "server" => {
            let mut server = Server::new_with_opt_and_conf(None, conf);
            server.bootstrap();
            let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
            service.add_tcp(&listen);
            server.add_service(service);
            println!("listening on {listen}");
            // Pingora's own signal handling: SIGINT stops at once, SIGTERM after the grace period.
            server.run_forever()
        }
        other => Err(format!("--host {other:?}: expected spawn or server").into()),
    }
}
