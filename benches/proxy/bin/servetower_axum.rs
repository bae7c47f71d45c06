//! `servetower-axum`: one axum `Router` answering `GET /` with the bench's 1 KiB body, served by
//! `pingora_tower::ServeTower` on a Pingora listener (compare with `axum-hyper`).
//!
//! ```text
//! servetower-axum [--listen 127.0.0.1:19006] [--workers 1]
//! ```
//! Runs on a multi-thread tokio runtime with `--workers` worker threads (`0` = current-thread).
//! Prints `listening on ADDR` once bound; stops on SIGINT or SIGTERM.

#[path = "../common.rs"]
mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use pingora_tower::{server, ServeTower};

const USAGE: &str = "servetower-axum [--listen 127.0.0.1:19006] [--workers 1]";

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let listen = args.get("listen", "127.0.0.1:19006");
    let workers: usize = args.parse_or("workers", 1);
    common::runtime(workers)?.block_on(async move {
        let app = Router::new().route("/", get(|| async { Bytes::from_static(&common::BODY) }));
        let running = server::spawn(&listen, ServeTower::new(app))
            .await?
            .with_shutdown_grace(Duration::from_secs(2));
        println!("listening on {}", running.local_addr());
        common::stop_signal().await?;
        running.shutdown().await;
        Ok(())
    })
}
