//! Run with `cargo run --example request_id_policy`: the policy of
//! `pingora_tower_examples::request_id` (`examples/src/request_id.rs`), a layer of your own,
//! stacked with ours in front of `127.0.0.1:9000`.

use pingora_tower::middleware::{self, Layered};
use pingora_tower::{PingoraProxy, Route, Upstream};
use pingora_tower_examples::request_id::RequestIds;
use tower::layer::layer_fn;

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    PingoraProxy::builder("127.0.0.1:8080")
        .routes([Route::prefix("/", Upstream::new("http://127.0.0.1:9000"))])
        // `Layered` makes any policy a layer's service; outermost, it acts before the others.
        .middleware(layer_fn(|i| Layered::wrap(RequestIds::default(), i)))
        .middleware(middleware::timeout(5_000))
        .start()
        .await?;
    Ok(())
}
