//! `bench-upstream`: the fixed upstream of the proxy bench. A minimal hyper HTTP/1.1 server that
//! answers every request with the same 1 KiB body (`Content-Length: 1024`, keep-alive), on a
//! multi-thread tokio runtime with one worker so it can be pinned to one CPU.
//!
//! ```text
//! bench-upstream [--listen 127.0.0.1:19000] [--workers 1]
//! ```
//! Prints `listening on ADDR` once bound; stops on SIGINT or SIGTERM.

#[path = "../common.rs"]
mod common;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const USAGE: &str = "bench-upstream [--listen 127.0.0.1:19000] [--workers 1]";

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let listen = args.get("listen", "127.0.0.1:19000");
    let workers = args.parse_or("workers", 1);
    common::runtime(workers)?.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("listening on {}", listener.local_addr()?);
        tokio::select! {
            r = common::stop_signal() => r?,
            () = serve(listener) => {}
        }
        Ok(())
    })
}

async fn serve(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(&common::BODY))))
}
