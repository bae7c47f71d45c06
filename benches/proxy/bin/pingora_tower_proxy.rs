//! `pingora-tower-proxy`: `PingoraProxy` in the proxy bench: one prefix route `/` to one
//! upstream, with no layers or with the four layers (limits set so they never trip).
//!
//! ```text
//! pingora-tower-proxy [--listen 127.0.0.1:19002] [--upstream http://127.0.0.1:19000]
//!                     [--layers none|four] [--workers 1] [--pool 128]
//!                     [--forwarded-headers yes|no] [--threads 0] [--reuse-port no|yes]
//!                     [--layers rate-limit|redis|redis-lease --redis redis://127.0.0.1:6379/]
//!                     [--tls-cert cert.pem --tls-key key.pem]
//!                     [--obs none|metrics|metrics-made-ids|log|log-buffered|log-layer|log-fmt]
//!                     [--access-log PATH]
//! ```
//! With `--tls-cert` and `--tls-key` the listener terminates TLS (`ProxyBuilder::tls`, one
//! certificate as the default of the SNI set).
//! `--obs metrics` adds the `obs` layer recording Prometheus metrics (what
//! `ProxyBuilder::admin` turns on; no subscriber, so spans and the access log cost only their
//! interest check); `--obs log` also writes the access log to `--access-log` (default
//! `/dev/null`) from the layer itself (`ObsLayer::access_log(AccessLog::file(..))`, the way we
//! recommend: one logfmt line, one `write` per request); `--obs log-buffered` holds the lines and
//! writes them 32 KiB at a time (`AccessLog::buffered`); `--obs log-layer` writes the same lines
//! from the access-log event (target `pingora_tower::access`) through `AccessLog`'s tracing
//! layer, and `--obs log-fmt` through a `tracing_subscriber` fmt layer without ANSI colours, for
//! comparison.
//! `--layers four` wraps the proxy, outermost first, in `timeout(30 s)`,
//! `rate_limit(1e9 per second)`, `retry(2)` and `circuit_breaker(50 %, 10 s)`. The proxy runs on
//! a multi-thread tokio runtime with `--workers` worker threads (`0` = current-thread), the same
//! host and runtime as `pingora-plain`; `--threads N` (N > 0) serves from N threads of the proxy's
//! own instead (`ProxyBuilder::threads`, a current-thread runtime each), accepting from one
//! shared socket, or with `--reuse-port yes` from one `SO_REUSEPORT` socket each
//! (`ProxyBuilder::reuse_port`). `--forwarded-headers no` leaves out the X-Forwarded-*
//! headers (on by default), for a like-for-like comparison with `pingora-plain`. Prints `listening on ADDR` once bound; stops on SIGINT
//! or SIGTERM.
//!
//! Built with the `redis` feature: `--layers rate-limit` is the rate limit alone (global key,
//! 1e9 per second), `--layers redis` the same limit with its state in the Redis at `--redis`
//! (exact mode), `--layers redis-lease` with leases of 100 tokens; the Redis ones print the
//! store's counters when they stop.

#[path = "../common.rs"]
mod common;

use std::time::Duration;

use pingora_core::server::configuration::ServerConf;
use pingora_tower::middleware;
use pingora_tower::middleware::obs::{AccessLog, Metrics, ObsLayer, ACCESS_LOG_TARGET};
use pingora_tower::proxy::{
    PingoraProxy, ProxyBuilder, Route, Upstream, DEFAULT_UPSTREAM_KEEPALIVE_POOL,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const USAGE: &str = "pingora-tower-proxy [--listen 127.0.0.1:19002] \
                     [--upstream http://127.0.0.1:19000] [--layers none|four] [--workers 1] \
                     [--pool 128] [--forwarded-headers yes|no] [--threads 0] \
                     [--reuse-port no|yes] \
                     [--layers rate-limit|redis|redis-lease --redis URL] \
                     [--tls-cert cert.pem --tls-key key.pem] \
                     [--obs none|metrics|metrics-made-ids|log|log-buffered|log-layer|log-fmt]
                     [--access-log PATH]";

/// Requests per second the rate limiter admits: far above anything the bench offers.
const NEVER_TRIPS_PER_SECOND: u32 = 1_000_000_000;

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let listen = args.get("listen", "127.0.0.1:19002");
    let upstream = args.get("upstream", "http://127.0.0.1:19000");
    let layers = args.get("layers", "none");
    let workers: usize = args.parse_or("workers", 1);
    let forwarded_headers = match args.get("forwarded-headers", "yes").as_str() {
        "yes" => true,
        "no" => false,
        other => return Err(format!("--forwarded-headers {other:?}: expected yes or no").into()),
    };
    let conf = ServerConf {
        upstream_keepalive_pool_size: args.parse_or("pool", DEFAULT_UPSTREAM_KEEPALIVE_POOL),
        ..ServerConf::default()
    };
    let threads: usize = args.parse_or("threads", 0);
    let reuse_port = match args.get("reuse-port", "no").as_str() {
        "yes" => true,
        "no" => false,
        other => return Err(format!("--reuse-port {other:?}: expected yes or no").into()),
    };
    let mut builder: ProxyBuilder = PingoraProxy::builder(&listen)
        .route(Route::prefix("/", Upstream::new(upstream.as_str())))
        .server_conf(conf)
        .forwarded_headers(forwarded_headers);
    if threads > 0 {
        builder = builder.threads(threads).reuse_port(reuse_port);
    }
    if let Some(tls) = common::tls_config(&args)? {
        builder = builder.tls(tls);
    }
    #[cfg(feature = "redis")]
    let redis_url = args.get("redis", "redis://127.0.0.1:6379/");
    match args.get("obs", "none").as_str() {
        "none" => {}
        "metrics" => builder = builder.metrics(Metrics::new()),
        // And a request id made for requests without one, written into the upstream request.
        "metrics-made-ids" => {
            builder = builder
                .metrics(Metrics::new())
                .observability(ObsLayer::new().generate_request_ids(true))
        }
        // The access log written by the `obs` layer itself (no subscriber).
        "log" => {
            let path = args.get("access-log", "/dev/null");
            let log = AccessLog::file(&path).map_err(|e| format!("--access-log: {e}"))?;
            builder = builder
                .metrics(Metrics::new())
                .observability(ObsLayer::new().access_log(log));
        }
        // The same, lines held and written 32 KiB at a time (nginx's `buffer=`), at least once
        // a second.
        "log-buffered" => {
            let path = args.get("access-log", "/dev/null");
            let log = AccessLog::file(&path)
                .map_err(|e| format!("--access-log: {e}"))?
                .buffered(32 * 1024, std::time::Duration::from_secs(1));
            builder = builder
                .metrics(Metrics::new())
                .observability(ObsLayer::new().access_log(log));
        }
        // The same lines from the access-log event, through `AccessLog`'s tracing layer.
        "log-layer" => {
            builder = builder.metrics(Metrics::new());
            let path = args.get("access-log", "/dev/null");
            let log = AccessLog::file(&path).map_err(|e| format!("--access-log: {e}"))?;
            tracing_subscriber::registry().with(log.layer()).init();
        }
        "log-fmt" => {
            builder = builder.metrics(Metrics::new());
            let path = args.get("access-log", "/dev/null");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("--access-log {path:?}: {e}"))?;
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                    "off,{ACCESS_LOG_TARGET}=info"
                )))
                .init();
        }
        other => {
            return Err(format!(
            "--obs {other:?}: expected none, metrics, metrics-made-ids, log, log-buffered, log-layer or log-fmt"
        )
            .into())
        }
    }
    common::runtime(workers)?.block_on(async move {
        #[cfg(feature = "redis")]
        let mut limiter = None;
        let running = match layers.as_str() {
            "none" => builder.build()?.spawn().await?,
            "four" => {
                builder
                    .middleware(middleware::timeout(30_000))
                    .middleware(middleware::rate_limit(NEVER_TRIPS_PER_SECOND, 1_000))
                    .middleware(middleware::retry(2))
                    .middleware(middleware::circuit_breaker(50, 10_000))
                    .build()?
                    .spawn()
                    .await?
            }
            #[cfg(feature = "redis")]
            "rate-limit" | "redis" | "redis-lease" => {
                let layer = rate_limit(&layers, &redis_url)?;
                limiter = Some(layer.clone());
                builder.middleware(layer).build()?.spawn().await?
            }
            other => return Err(format!("--layers {other:?}: expected none or four").into()),
        };
        println!("listening on {}", running.local_addr());
        common::stop_signal().await?;
        #[cfg(feature = "redis")]
        if let Some(stats) = limiter.and_then(|l| l.redis_stats()) {
            println!("redis store: {stats:?}");
        }
        // Bounded: a client still connected would hold the shutdown for its whole grace period.
        let _ = tokio::time::timeout(Duration::from_secs(2), running.shutdown()).await;
        Ok(())
    })
}

/// The rate limit of `--layers rate-limit|redis|redis-lease`: built inside the runtime, which
/// drives the store's connection. A call timeout of 50 ms: the bench measures the cost of the
/// calls, not the failure policy.
#[cfg(feature = "redis")]
fn rate_limit(
    layers: &str,
    url: &str,
) -> Result<middlewares::rate_limit::RateLimitLayer, common::BoxError> {
    use middlewares::rate_limit::redis::RedisStore;
    use middlewares::rate_limit::RateLimitLayer;
    let builder = RateLimitLayer::builder(NEVER_TRIPS_PER_SECOND, Duration::from_secs(1));
    let lease = match layers {
        "redis" => 1,
        "redis-lease" => 100,
        _ => return Ok(builder.build()?),
    };
    let store = RedisStore::builder(url)
        .prefix("proxy-bench")
        .call_timeout(Duration::from_millis(50))
        .lease(lease, Duration::from_secs(1))
        .build()?;
    Ok(builder.redis(store).build()?)
}
