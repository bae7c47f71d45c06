//! Runnable examples for `pingora-tower` and `middlewares`, as a library so the integration
//! tests can drive the same code paths the examples run.
//!
//! - [`demo`]: the README's demo (`cargo run --release --example pingora_demo`), a reverse
//!   proxy on Pingora in front of an embedded axum upstream; [`demo_tls`] its TLS listener.
//! - [`request_id`]: a proxy-side layer written as a `ProxyPolicy`, the way a user writes one
//!   (`cargo run --example request_id_policy`).
//! - [`resilient_axum`]: an axum app with the four layers in `Router::layer`
//!   (`cargo run --example resilient_axum`).

pub mod demo;
pub mod demo_tls;
pub mod request_id;
pub mod resilient_axum;
