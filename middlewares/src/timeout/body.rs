//! [`TimeoutBody`]: a response body that ends with an error once the request deadline passes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

use super::Elapsed;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A body that yields the frames of `B` until the request deadline, then ends with a boxed
    /// [`Elapsed`] error (downcast it with `err.downcast_ref::<Elapsed>()`).
    ///
    /// Produced by [`BodyTimeout`](super::BodyTimeout). Like the response future, it arms its
    /// timer only the first time the inner body returns `Pending`, so a body that is already
    /// buffered costs no timer. [`TimeoutBody::default`] has no deadline.
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Option<Instant>,
        elapsed: bool,
    }
}

impl<B> TimeoutBody<B> {
    /// Wraps `inner`, failing it when `deadline` passes before it ends.
    pub fn new(inner: B, deadline: Instant) -> Self {
        TimeoutBody {
            inner,
            sleep: None,
            deadline: Some(deadline),
            elapsed: false,
        }
    }

    /// Wraps `inner` with no deadline: it streams exactly like `inner`.
    pub fn without_deadline(inner: B) -> Self {
        TimeoutBody {
            inner,
            sleep: None,
            deadline: None,
            elapsed: false,
        }
    }

    /// The deadline this body must end by, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for TimeoutBody<B> {
    fn default() -> Self {
        TimeoutBody::without_deadline(B::default())
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.elapsed {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep_until(deadline)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                *this.elapsed = true;
                // Free the timer entry now; the body may be kept around after the error.
                this.sleep.set(None);
                tracing::debug!("request deadline elapsed while streaming the response body");
                return Poll::Ready(Some(Err(Box::new(Elapsed::default()))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.elapsed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
