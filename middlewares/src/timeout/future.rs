//! Response futures of [`Timeout`](super::Timeout) and [`BodyTimeout`](super::BodyTimeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

use super::{Elapsed, TimeoutBody};
use crate::cut_off;
use crate::Rejection;

pin_project! {
    /// Response future of [`Timeout`](super::Timeout).
    ///
    /// Polls the inner future first and arms its timer only when the inner future returns
    /// `Pending`: a response that is ready at once never pays for a tokio `Sleep`. The deadline
    /// was fixed when the request was called, so arming late does not extend it.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Call<F>,
        #[pin]
        timer: Timer,
        elapsed: Elapsed,
    }
}

pin_project! {
    // The inner call, dropped in place the moment the deadline passes so that a circuit breaker
    // inside sees it cut off by a deadline (see `crate::cut_off`), not cancelled.
    #[project = CallProj]
    enum Call<F> {
        Running { #[pin] future: F },
        CutOff,
    }
}

pin_project! {
    // The deadline shares its space with the `Sleep` that replaces it: a separate field made the
    // future 16 bytes larger than tower's, past the size moved inline instead of by `memcpy`.
    #[project = TimerProj]
    enum Timer {
        Unarmed { deadline: Instant },
        Armed { #[pin] sleep: Sleep },
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(super) fn new(inner: F, deadline: Instant, elapsed: Elapsed) -> Self {
        ResponseFuture {
            inner: Call::Running { future: inner },
            timer: Timer::Unarmed { deadline },
            elapsed,
        }
    }

    /// The instant this request times out at.
    pub fn deadline(&self) -> Instant {
        match &self.timer {
            Timer::Unarmed { deadline } => *deadline,
            Timer::Armed { sleep } => sleep.deadline(),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.inner.as_mut().project() {
            CallProj::Running { future } => {
                if let Poll::Ready(out) = future.poll(cx) {
                    return Poll::Ready(out);
                }
            }
            CallProj::CutOff => return Poll::Ready(Ok(this.elapsed.to_response())),
        }
        if let TimerProj::Unarmed { deadline } = this.timer.as_mut().project() {
            // First `Pending`: only now pay for the timer.
            let sleep = sleep_until(*deadline);
            this.timer.set(Timer::Armed { sleep });
        }
        if let TimerProj::Armed { sleep } = this.timer.project() {
            ready!(sleep.poll(cx));
            tracing::debug!(status = %this.elapsed.status(), "request deadline elapsed");
            if this.elapsed.is_client_deadline() {
                // The client's own deadline: the call is cancelled, the backend not blamed.
                this.inner.set(Call::CutOff);
            } else {
                cut_off::by_deadline(|| this.inner.set(Call::CutOff));
            }
            return Poll::Ready(Ok(this.elapsed.to_response()));
        }
        Poll::Pending
    }
}

pin_project! {
    /// Response future of [`BodyTimeout`](super::BodyTimeout): a [`ResponseFuture`] whose
    /// response body is wrapped in a [`TimeoutBody`] carrying the same deadline.
    pub struct BodyResponseFuture<F> {
        #[pin]
        inner: ResponseFuture<F>,
    }
}

impl<F> BodyResponseFuture<F> {
    pub(super) fn new(inner: ResponseFuture<F>) -> Self {
        BodyResponseFuture { inner }
    }
}

impl<F, B, E> Future for BodyResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<TimeoutBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let deadline = this.inner.deadline();
        let res = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(res.map(|body| TimeoutBody::new(body, deadline))))
    }
}
