//! Runnable examples for `pingora-tower` and `middlewares`, as a library so the integration
//! tests can drive the same code paths the examples run.
//!
//! - [`demo`]: the README's demo (`cargo run --release --example pingora_demo`), a reverse
//!   proxy on Pingora in front of an embedded axum upstream.

pub mod demo;
