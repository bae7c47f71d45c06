//! Run with `cargo run --example axum_on_pingora`: an axum `Router` served by Pingora through
//! `ServeTower` on `127.0.0.1:3000` (or the address given as first argument) until Ctrl-C.

use axum::routing::{get, post};
use axum::Router;
use pingora_tower::{server, ServeTower};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let app = Router::new()
        .route("/", get(|| async { "hello from axum on pingora\n" }))
        .route("/echo", post(|body: String| async move { body }));
    let running = server::spawn(&addr, ServeTower::new(app)).await?;
    println!("listening on http://{}", running.local_addr());
    println!("try: curl -i http://{}/", running.local_addr());
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}
