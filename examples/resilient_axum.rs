//! Run with `cargo run --example resilient_axum`: an axum app on plain hyper (`axum::serve`)
//! with the four `middlewares` layers in `Router::layer`, on `127.0.0.1:3000` (or the address
//! given as first argument). See `pingora_tower_examples::resilient_axum` for its routes.

use std::net::SocketAddr;

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
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}");
    println!("  curl -i {base}/                # RateLimit headers");
    println!("  curl -i {base}/flaky           # 503 upstream, 200 after a retry");
    println!("  curl -i '{base}/slow?ms=3000'  # 504 after 2 s");
    println!("  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/fail; done; echo   # breaker opens");
    let app = pingora_tower_examples::resilient_axum::app();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
