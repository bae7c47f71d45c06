//! Response futures of [`Timeout`](super::Timeout) and [`BodyTimeout`](super::BodyTimeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

use super::{Elapsed, TimeoutBody};

pin_project! {
    /// Response future of [`Timeout`](super::Timeout).
    ///
    /// Polls the inner future first and arms its timer only when the inner future returns
    /// `Pending`: a response that is ready at once never pays for a tokio `Sleep`. The deadline
    /// was fixed when the request was called, so arming late does not extend it.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Timer,
        elapsed: Elapsed,
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
            inner,
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
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        if let TimerProj::Unarmed { deadline } = this.timer.as_mut().project() {
            // First `Pending`: only now pay for the timer.
            let sleep = sleep_until(*deadline);
            this.timer.set(Timer::Armed { sleep });
        }
        if let TimerProj::Armed { sleep } = this.timer.project() {
            ready!(sleep.poll(cx));
            tracing::debug!(status = %this.elapsed.status(), "request deadline elapsed");
            return Poll::Ready(Ok(this.elapsed.into_response()));
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
