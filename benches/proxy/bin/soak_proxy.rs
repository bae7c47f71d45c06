//! `soak-proxy`: `PingoraProxy` with the four layers for the soak run (`benches/soak/run.sh`),
//! with a short deadline so an upstream that stalls is cut quickly.
//!
//! ```text
//! soak-proxy [--listen 127.0.0.1:19002] [--upstream http://127.0.0.1:19000] [--workers 1]
//!            [--timeout-ms 500] [--rate-limit 1000000] [--retries 2]
//!            [--breaker-percent 50] [--breaker-open-ms 1000]
//! ```
//! Layers, outermost first: `timeout(--timeout-ms)`, `rate_limit(--rate-limit per second)`,
//! `retry(--retries)`, `circuit_breaker(--breaker-percent, --breaker-open-ms)`. Prints
//! `listening on ADDR` once bound; stops on SIGINT or SIGTERM.

#[path = "../common.rs"]
mod common;

use std::time::Duration;

use pingora_tower::middleware;
use pingora_tower::proxy::{PingoraProxy, Route, Upstream};

const USAGE: &str = "soak-proxy [--listen 127.0.0.1:19002] [--upstream http://127.0.0.1:19000] \
                     [--workers 1] [--timeout-ms 500] [--rate-limit 1000000] [--retries 2] \
                     [--breaker-percent 50] [--breaker-open-ms 1000]";

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let listen = args.get("listen", "127.0.0.1:19002");
    let upstream = args.get("upstream", "http://127.0.0.1:19000");
    let workers: usize = args.parse_or("workers", 1);
    let timeout_ms: u64 = args.parse_or("timeout-ms", 500);
    let rate_limit: u32 = args.parse_or("rate-limit", 1_000_000);
    let retries: u32 = args.parse_or("retries", 2);
    let breaker_percent: u8 = args.parse_or("breaker-percent", 50);
    let breaker_open_ms: u64 = args.parse_or("breaker-open-ms", 1_000);
    if !(1..=100).contains(&breaker_percent) {
        return Err(format!("--breaker-percent {breaker_percent}: expected 1..=100").into());
    }
    let limiter =
        middleware::rate_limit::RateLimitLayer::builder(rate_limit, Duration::from_secs(1))
            .build()
            .map_err(|e| format!("--rate-limit {rate_limit}: {e}"))?;
    let builder = PingoraProxy::builder(&listen)
        .route(Route::prefix("/", Upstream::new(upstream.as_str())))
        .with_timeouts(timeout_ms.max(1), timeout_ms.max(1) * 2)
        .middleware(middleware::timeout(timeout_ms))
        .middleware(limiter)
        .middleware(middleware::retry(retries))
        .middleware(middleware::circuit_breaker(
            breaker_percent,
            breaker_open_ms,
        ));
    common::runtime(workers)?.block_on(async move {
        let running = builder.build()?.spawn().await?;
        println!("listening on {}", running.local_addr());
        common::stop_signal().await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), running.shutdown()).await;
        Ok(())
    })
}
