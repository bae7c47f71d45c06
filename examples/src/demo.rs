//! The README's demo: `cargo run --release --example pingora_demo` starts an embedded axum
//! upstream (on Pingora, through `ServeTower`) and the Pingora reverse proxy in front of it,
//! then prints `curl` lines to try.
//!
//! Options (flags win over environment variables):
//! - `--listen ADDR` / `DEMO_LISTEN`: the proxy's address (default [`DEFAULT_LISTEN`]).
//! - `--upstream URL` / `DEMO_UPSTREAM`: proxy to this URL instead of the embedded upstream.
//! - `--tls` / `DEMO_TLS=1`: terminate TLS with a self-signed certificate made at start-up
//!   (see [`demo_tls`](crate::demo_tls)); the printed `curl` lines trust it with `--cacert`.
//! - `--admin ADDR` / `DEMO_ADMIN`: the admin listener (`/metrics`, `/status`, the status page
//!   at `/`; default [`DEFAULT_ADMIN`], loopback).
//!
//! Every layer reports into the proxy's metrics, and each request is logged on the
//! `pingora_tower::access` target (the binary prints it, without colours when its output is
//! not a terminal).
//!
//! The embedded upstream answers:
//! - `/`: a greeting; `/health`: `ok`;
//! - `/slow?ms=N`: after `N` milliseconds (at most 60 000);
//! - `/flaky`: `503` on every third call, `200` otherwise;
//! - `/status/{code}`: that status.
//!
//! # Example
//! ```no_run
//! use pingora_tower_examples::demo::{self, DemoConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), demo::DemoError> {
//! let demo = demo::spawn(&DemoConfig::new("127.0.0.1:0")).await?;
//! for line in demo.curl_lines() {
//!     println!("{line}");
//! }
//! demo.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use pingora_tower::middleware;
use pingora_tower::middleware::circuit_breaker::CircuitBreakerLayer;
use pingora_tower::middleware::obs::{Metrics, ObsLayer};
use pingora_tower::middleware::rate_limit::RateLimitLayer;
use pingora_tower::middleware::retry::RetryLayer;
use pingora_tower::proxy::{HealthCheck, PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower::{server, RunningServer, ServeTower};

use crate::demo_tls::{DemoCert, DEMO_TLS_NAME};

/// Requests per second the demo's rate limiter admits (with a burst of the same size).
pub const DEMO_RATE_PER_SECOND: u32 = 20;

/// The proxy's default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The admin listener's default address (loopback only: it describes the backends).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// Errors of the demo (configuration, bind, I/O).
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// Where the demo listens and what it proxies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// The proxy's listen address (`"127.0.0.1:0"` picks a free port).
    pub listen: String,
    /// An external upstream URL; `None` starts the embedded one.
    pub upstream: Option<String>,
    /// Terminate TLS with a fresh self-signed certificate.
    pub tls: bool,
    /// The admin listener's address.
    pub admin: String,
}

impl DemoConfig {
    /// Listens on `listen`, with the embedded upstream and the admin listener on a free
    /// loopback port.
    pub fn new(listen: impl Into<String>) -> Self {
        DemoConfig {
            listen: listen.into(),
            upstream: None,
            tls: false,
            admin: "127.0.0.1:0".to_owned(),
        }
    }

    /// Reads `DEMO_LISTEN` and `DEMO_UPSTREAM`, then the `--listen ADDR` and `--upstream URL`
    /// flags (also `--flag=value`) from `args` (without the program name).
    ///
    /// # Errors
    /// An unknown flag, or a flag without its value.
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut config = DemoConfig {
            listen: std::env::var("DEMO_LISTEN").unwrap_or_else(|_| DEFAULT_LISTEN.to_owned()),
            upstream: std::env::var("DEMO_UPSTREAM")
                .ok()
                .filter(|u| !u.is_empty()),
            tls: std::env::var("DEMO_TLS").is_ok_and(|v| v == "1"),
            admin: std::env::var("DEMO_ADMIN").unwrap_or_else(|_| DEFAULT_ADMIN.to_owned()),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--tls" => config.tls = true,
                "--listen" => config.listen = value()?,
                "--upstream" => config.upstream = Some(value()?),
                "--admin" => config.admin = value()?,
                "-h" | "--help" => return Err(
                    "usage: pingora_demo [--listen ADDR] [--upstream URL] [--admin ADDR] [--tls]"
                        .to_owned(),
                ),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(config)
    }
}

/// The embedded upstream's routes (see the module docs).
pub fn upstream_app() -> Router {
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    Router::new()
        .route("/", get(|| async { "hello from the demo upstream\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/slow",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                let ms = q
                    .get("ms")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .unwrap_or(1_000)
                    .min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slept {ms} ms\n")
            }),
        )
        .route(
            "/flaky",
            get(move || {
                let calls = flaky_calls.clone();
                async move {
                    let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 3 == 0 {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("call {n}: failed\n"),
                        )
                    } else {
                        (StatusCode::OK, format!("call {n}: ok\n"))
                    }
                }
            }),
        )
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                match StatusCode::from_u16(code) {
                    Ok(status) => (status, format!("status {code}\n")),
                    Err(_) => (StatusCode::BAD_REQUEST, format!("{code} is not a status\n")),
                }
            }),
        )
}

/// The running demo: the proxy and, unless an external upstream was given, the embedded one.
#[derive(Debug)]
pub struct Demo {
    proxy: RunningProxy,
    upstream: Option<RunningServer>,
    upstream_url: String,
    tls: Option<DemoCert>,
}

/// Starts the upstream (unless `config.upstream` is set) and the proxy in the background.
///
/// # Errors
/// A bad upstream URL, or an address that cannot be bound.
pub async fn spawn(config: &DemoConfig) -> Result<Demo, DemoError> {
    let (embedded, upstream) = match &config.upstream {
        Some(url) => (None, Upstream::new(url.as_str())),
        None => {
            let running = server::spawn("127.0.0.1:0", ServeTower::new(upstream_app())).await?;
            let url = format!("http://{}", running.local_addr());
            let upstream = Upstream::new(url.as_str()).health_check(HealthCheck::http("/health"));
            (Some(running), upstream)
        }
    };
    let upstream_url = upstream
        .targets()
        .next()
        .map(|(url, _)| url.to_owned())
        .unwrap_or_default();

    let mut builder = PingoraProxy::builder(&config.listen)
        .routes([Route::prefix("/", upstream)])
        .with_timeouts(2_000, 30_000);
    let tls = if config.tls {
        let cert = DemoCert::generate()?;
        builder = builder.tls(cert.tls());
        Some(cert)
    } else {
        None
    };

    // The four layers, outermost first (each `.middleware` wraps the proxy built so far, like
    // `ServiceBuilder::layer`). The rate is low enough to trip by hand with curl. Each reports
    // into the metrics the admin listener serves.
    let metrics = Metrics::new();
    let rate_limit = RateLimitLayer::builder(DEMO_RATE_PER_SECOND, Duration::from_secs(1))
        .expose_headers(true)
        .observer(Arc::new(metrics.clone()))
        .build()?;
    let retry = RetryLayer::builder(2)
        .observer(Arc::new(metrics.clone()))
        .build()?;
    let breaker = CircuitBreakerLayer::builder()
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(10))
        .on_state_transition(metrics.on_breaker_transition())
        .build()?;
    metrics.watch_breakers(breaker.handle());
    let builder = builder
        .admin(&config.admin)
        // Requests without an `x-request-id` get one, so each access log line has an id.
        .observability(ObsLayer::new().generate_request_ids(true))
        .metrics(metrics)
        .middleware(middleware::timeout(5_000))
        .middleware(rate_limit)
        .middleware(retry)
        .middleware(breaker);

    let proxy = builder.build()?.spawn().await?;
    Ok(Demo {
        proxy,
        upstream: embedded,
        upstream_url,
        tls,
    })
}

/// [`spawn`], print where it listens and the `curl` lines, serve until SIGINT/SIGTERM, then
/// shut down gracefully.
///
/// # Errors
/// As [`spawn`], or when the signal handlers cannot be installed.
pub async fn run(config: &DemoConfig) -> Result<(), DemoError> {
    let demo = spawn(config).await?;
    println!("proxy on {} -> {}", demo.base_url(), demo.upstream_url());
    if let Some(admin) = demo.admin_addr() {
        println!("admin on http://{admin}/ (status page), /status, /metrics");
    }
    println!("try:");
    for line in demo.curl_lines() {
        println!("  {line}");
    }
    println!("Ctrl-C to stop");
    wait_for_signal().await?;
    demo.shutdown().await;
    Ok(())
}

impl Demo {
    /// The proxy's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.proxy.admin_addr()
    }

    /// Where the proxy sends requests.
    pub fn upstream_url(&self) -> &str {
        &self.upstream_url
    }

    /// The proxy's base URL: `http://ADDR`, or `https://localhost:PORT` with TLS.
    pub fn base_url(&self) -> String {
        match &self.tls {
            None => format!("http://{}", self.proxy_addr()),
            Some(_) => format!("https://{DEMO_TLS_NAME}:{}", self.proxy_addr().port()),
        }
    }

    /// The self-signed certificate's file, when the demo terminates TLS.
    pub fn tls_cert_path(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(DemoCert::cert_path)
    }

    /// `curl` commands that exercise the demo through the proxy.
    pub fn curl_lines(&self) -> Vec<String> {
        let base = self.base_url();
        let (addr, port) = (self.proxy_addr(), self.proxy_addr().port());
        let (curl, tls_lines) = match self.tls_cert_path() {
            None => ("curl".to_owned(), vec![]),
            Some(cert) => {
                let cert = cert.display();
                (
                    format!("curl --cacert {cert} --resolve {DEMO_TLS_NAME}:{port}:{}", addr.ip()),
                    vec![format!(
                        "openssl s_client -connect {addr} -servername {DEMO_TLS_NAME} -CAfile {cert} </dev/null   # the certificate and the TLS version"
                    )],
                )
            }
        };
        let mut lines = tls_lines;
        lines.splice(0..0, [
            format!("{curl} -i {base}/                      # proxied, with RateLimit headers"),
            format!(
                "for i in $(seq 30); do {curl} -s -o /dev/null -w '%{{http_code}} ' {base}/; done; echo   # rate limit: 429 past {DEMO_RATE_PER_SECOND}/s"
            ),
            format!(
                "for i in $(seq 6); do {curl} -s {base}/flaky; done   # retry: every third call fails upstream, clients see 200"
            ),
            format!("{curl} -i '{base}/slow?ms=8000'        # timeout: 504 after 5 s"),
            format!(
                "for i in $(seq 12); do {curl} -s -o /dev/null -w '%{{http_code}} ' {base}/status/500; done; echo; {curl} -i {base}/   # breaker: opens, then 503 + Retry-After for 10 s"
            ),
        ]);
        if let Some(admin) = self.admin_addr() {
            lines.push(format!(
                "curl -s http://{admin}/metrics | grep -v '^#'   # Prometheus metrics"
            ));
            lines.push(format!(
                "curl -s http://{admin}/status               # JSON: backends, breakers, QPS, p95/p99"
            ));
        }
        lines
    }

    /// Stops the proxy (in-flight requests finish), then the embedded upstream, and removes
    /// the TLS certificate file.
    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        if let Some(upstream) = self.upstream {
            upstream.shutdown().await;
        }
        if let Some(cert) = self.tls {
            cert.remove_file();
        }
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
