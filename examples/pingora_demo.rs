//! Run with `cargo run --release --example pingora_demo [-- --listen ADDR --upstream URL]`:
//! a Pingora reverse proxy (default `127.0.0.1:8080`) in front of an embedded axum upstream.
//! See `pingora_tower_examples::demo` for what it serves. The access log (one line per
//! request) and the admin listener's URL are printed.

use std::io::IsTerminal;

use pingora_tower_examples::demo::{self, DemoConfig};

#[tokio::main]
async fn main() -> Result<(), demo::DemoError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colour codes only on a terminal, not in a file or a pipe.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = DemoConfig::from_env_and_args(std::env::args().skip(1))?;
    demo::run(&config).await
}
