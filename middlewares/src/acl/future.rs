//! Response future of [`Acl`](super::Acl).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::Denied;
use crate::Rejection;

pin_project! {
    /// Response future of [`Acl`](super::Acl): the inner service's future, or the refusal.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        denied: Option<Denied>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn called(inner: F) -> Self {
        ResponseFuture {
            inner: Some(inner),
            denied: None,
        }
    }

    pub(super) fn denied(denied: Denied) -> Self {
        ResponseFuture {
            inner: None,
            denied: Some(denied),
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
        let this = self.project();
        if let Some(inner) = this.inner.as_pin_mut() {
            return inner.poll(cx);
        }
        match this.denied.take() {
            Some(denied) => Poll::Ready(Ok(denied.to_response())),
            // Polled after completion.
            None => Poll::Pending,
        }
    }
}
