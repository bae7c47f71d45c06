//! `axum-hyper`: the same axum `Router` as `servetower-axum` (`GET /` answers the bench's 1 KiB
//! body), served by `axum::serve` (hyper) instead of Pingora, with `TCP_NODELAY` on.
//!
//! ```text
//! axum-hyper [--listen 127.0.0.1:19007] [--workers 1]
//! ```
//! Runs on a multi-thread tokio runtime with `--workers` worker threads (`0` = current-thread).
//! Prints `listening on ADDR` once bound; stops on SIGINT or SIGTERM.

#[path = "../common.rs"]
mod common;

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;

const USAGE: &str = "axum-hyper [--listen 127.0.0.1:19007] [--workers 1]";

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let listen = args.get("listen", "127.0.0.1:19007");
    let workers: usize = args.parse_or("workers", 1);
    common::runtime(workers)?.block_on(async move {
        let app = Router::new().route("/", get(|| async { Bytes::from_static(&common::BODY) }));
        let listener = TcpListener::bind(&listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = common::stop_signal().await;
            })
            .await?;
        Ok(())
    })
}
