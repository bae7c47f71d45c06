//! Response future of [`RateLimit`](super::RateLimit).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::HeaderValue;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::error::{RATELIMIT, RATELIMIT_POLICY};
use super::RateLimited;

/// `RateLimit-Policy` and `RateLimit` values for an admitted response, when `expose_headers` is
/// on (boxed: 8 bytes instead of 64 in every future when it is off).
type QuotaHeaders = Option<Box<(HeaderValue, HeaderValue)>>;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): the inner future, a queued request
    /// waiting for its slot, or a `429` answer.
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        state: State<F, S, B>,
    }
}

pin_project! {
    // Every variant but `Called` is boxed or small: the future of an admitted request is the
    // inner future and one word, so the layers above and the caller move (`memcpy`) no more.
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<F, S, B> {
        // Admitted, no headers to add: the inner future alone, so completing and dropping it
        // costs what the inner future costs.
        Called { #[pin] fut: F },
        // Admitted, adding the quota headers to the response.
        CalledWithHeaders { #[pin] fut: F, headers: QuotaHeaders },
        // Only queued requests pay for the timer and the space of the service and the request.
        Waiting { sleep: Pin<Box<Sleep>>, pending: Box<(S, Request<B>, QuotaHeaders)> },
        Rejected { err: Box<RateLimited> },
        Done,
    }
}

impl<F, S, B> ResponseFuture<F, S, B> {
    #[inline]
    pub(super) fn called(fut: F, headers: QuotaHeaders) -> Self {
        let state = match headers {
            None => State::Called { fut },
            headers => State::CalledWithHeaders { fut, headers },
        };
        ResponseFuture { state }
    }

    pub(super) fn waiting(sleep: Sleep, svc: S, req: Request<B>, headers: QuotaHeaders) -> Self {
        ResponseFuture {
            state: State::Waiting {
                sleep: Box::pin(sleep),
                pending: Box::new((svc, req, headers)),
            },
        }
    }

    pub(super) fn rejected(err: RateLimited) -> Self {
        ResponseFuture {
            state: State::Rejected { err: Box::new(err) },
        }
    }
}

impl<F, S, B, ResBody> Future for ResponseFuture<F, S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>, Future = F>,
    F: Future<Output = Result<Response<ResBody>, S::Error>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                // Not set to `Done` afterwards: like any future, the inner one is not polled
                // again after `Ready`, and rewriting the state would only cost a drop and a store.
                // Without headers to add, hand the inner poll on as it is: taking the response
                // out and wrapping it again cost two moves of it.
                StateProj::Called { fut } => return fut.poll(cx),
                StateProj::CalledWithHeaders { fut, headers } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(pair) = headers.take() {
                        let (policy, quota) = *pair;
                        res.headers_mut().insert(RATELIMIT_POLICY, policy);
                        res.headers_mut().insert(RATELIMIT, quota);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Waiting { sleep, .. } => {
                    ready!(sleep.as_mut().poll(cx));
                    if let StateReplace::Waiting { pending, .. } =
                        state.as_mut().project_replace(State::Done)
                    {
                        // The service was made ready before `call` moved it here.
                        let (mut svc, req, headers) = *pending;
                        state.set(ResponseFuture::called(svc.call(req), headers).state);
                    }
                }
                StateProj::Rejected { err } => {
                    let res = err.into_response();
                    state.set(State::Done);
                    return Poll::Ready(Ok(res));
                }
                // Polled after completion.
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}
