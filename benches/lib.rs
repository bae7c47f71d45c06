//! Support for the `pingora-tower-benches` benches: the inner services every bench wraps
//! ([`inner!`]), the measured call loop ([`calls`]), a minimal `governor` layer
//! ([`GovernorLayer`]) used as the rate-limit baseline, and the layer configurations every
//! bench measures ([`configs`]).
//!
//! Nothing here depends on Pingora; see `README.md` beside this file for what each bench
//! measures and how to run it.

// Benches time real runs and drive governor's clock: wall-clock `std::time::Instant` is the point.
#![allow(clippy::disallowed_types)]

pub mod configs;

use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

/// The rate every rate limiter in the benches is configured with (requests per second, and the
/// same burst): far above what one core can send, so no limiter ever rejects or delays, and the
/// benches measure the admission path only.
pub const HUGE_RATE: u32 = 1_000_000_000;

/// A `tower::service_fn` inner service for the benches, answering `200` with a default body.
///
/// `inner!(immediate, ReqBody, ResBody)` answers at once; `inner!(yield_once, ReqBody, ResBody)`
/// first awaits `tokio::task::yield_now()` once, so its future returns `Pending` on the first
/// poll (which is when a timeout arms its timer). The request body type is spelled out because
/// the retry layer hands its inner service a `Request<ReplayBody<B>>`.
///
/// Expands to a closure that makes the service, so a bench can build a fresh stack per sample.
#[macro_export]
macro_rules! inner {
    (immediate, $req:ty, $res:ty) => {
        || {
            ::tower::service_fn(|_req: ::http::Request<$req>| async {
                ::std::result::Result::Ok::<_, ::std::convert::Infallible>(::http::Response::new(
                    <$res as ::std::default::Default>::default(),
                ))
            })
        }
    };
    (yield_once, $req:ty, $res:ty) => {
        || {
            ::tower::service_fn(|_req: ::http::Request<$req>| async {
                ::tokio::task::yield_now().await;
                ::std::result::Result::Ok::<_, ::std::convert::Infallible>(::http::Response::new(
                    <$res as ::std::default::Default>::default(),
                ))
            })
        }
    };
}

/// Makes `iters` calls on `svc` (`ready().await`, `call(Request::new(B::default()))`, `.await`)
/// and returns the time they took: the loop every bench times, identical for every variant.
///
/// Each response must be a success: a limiter that rejected or a breaker that opened would make
/// its variant look cheaper than it is, so that panics instead.
pub async fn calls<S, B, R>(svc: &mut S, iters: u64) -> Duration
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Debug,
    B: Default,
{
    let start = Instant::now();
    for _ in 0..iters {
        let ready = svc.ready().await.expect("poll_ready failed");
        let res = ready
            .call(Request::new(B::default()))
            .await
            .expect("call failed");
        assert!(res.status().is_success(), "unexpected {}", res.status());
        black_box(res);
    }
    start.elapsed()
}

/// A minimal rate-limit layer over one `governor` direct limiter: `check()` in `call`, `429`
/// when it says no. The smallest thing a hand-written governor middleware can be, used as the
/// "fastest comparable" rate-limit baseline. Clones share the limiter.
///
/// `C` is governor's clock: its default reads the TSC through `quanta`; with
/// [`MonotonicClock`] it reads `std::time::Instant`, the clock tokio's `Instant` is (ours reads
/// the counter too, or tokio's clock when that is paused where the layer is built).
#[derive(Debug)]
pub struct GovernorLayer<C: Clock = DefaultClock> {
    limiter: Arc<DirectLimiter<C>>,
}

/// governor's direct (one-key) in-memory limiter on clock `C`.
type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

impl<C: Clock> Clone for GovernorLayer<C> {
    fn clone(&self) -> Self {
        GovernorLayer {
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl GovernorLayer {
    /// A layer admitting `per_second` requests per second, with a burst of the same size.
    pub fn per_second(per_second: NonZeroU32) -> Self {
        GovernorLayer {
            limiter: Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
        }
    }
}

impl GovernorLayer<MonotonicClock> {
    /// [`GovernorLayer::per_second`] on governor's `std::time::Instant` clock.
    pub fn per_second_std_clock(per_second: NonZeroU32) -> Self {
        GovernorLayer {
            limiter: Arc::new(RateLimiter::direct_with_clock(
                Quota::per_second(per_second),
                MonotonicClock,
            )),
        }
    }
}

impl<S, C: Clock> Layer<S> for GovernorLayer<C> {
    type Service = Governor<S, C>;

    fn layer(&self, inner: S) -> Governor<S, C> {
        Governor {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// The service made by [`GovernorLayer`].
#[derive(Debug)]
pub struct Governor<S, C: Clock = DefaultClock> {
    inner: S,
    limiter: Arc<DirectLimiter<C>>,
}

impl<S: Clone, C: Clock> Clone for Governor<S, C> {
    fn clone(&self) -> Self {
        Governor {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<S, C, B, R> Service<Request<B>> for Governor<S, C>
where
    S: Service<Request<B>, Response = Response<R>>,
    C: Clock,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = GovernorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.limiter.check() {
            Ok(()) => GovernorFuture {
                fut: Some(self.inner.call(req)),
            },
            Err(_) => GovernorFuture { fut: None },
        }
    }
}

pin_project! {
    /// Response future of [`Governor`]: the inner call, or an empty `429` when `fut` is `None`.
    #[derive(Debug)]
    pub struct GovernorFuture<F> {
        #[pin]
        fut: Option<F>,
    }
}

impl<F, R, E> Future for GovernorFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: Default,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().fut.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => {
                let mut res = Response::new(R::default());
                *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                Poll::Ready(Ok(res))
            }
        }
    }
}
