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
#[cfg(feature = "redis")]
use super::{layer::DecisionFuture, Decision, RateLimitLayer};
use crate::Rejection;

/// `RateLimit-Policy` and `RateLimit` values for an admitted response, when `expose_headers` is
/// on.
pub(super) type QuotaHeaders = Option<(HeaderValue, Option<HeaderValue>)>;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): the inner future, a queued request
    /// waiting for its slot, or a `429` answer.
    //
    // An admitted request without headers to add is the inner future and one null pointer, and
    // dropping it costs what dropping the inner future costs: everything else lives in one box
    // (an enum over all cases made the drop an out-of-line call on every request).
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        fut: Option<F>,
        rest: Option<Box<Rest<S, B>>>,
    }
}

/// What a request other than a plain admitted one needs.
enum Rest<S, B> {
    /// Admitted: add these `RateLimit-Policy` and (when known) `RateLimit` values to the
    /// response.
    Headers(HeaderValue, Option<HeaderValue>),
    /// Queued (boxed again: the request would make every variant as large).
    Waiting(Pin<Box<Waiting<S, B>>>),
    /// Rejected: answer `429`.
    Rejected(RateLimited),
    /// Waiting for Redis' decision.
    #[cfg(feature = "redis")]
    Deciding(Box<Deciding<S, B>>),
}

/// A request whose decision waits for Redis: the decision, the layer (for the headers), and
/// the service made ready with the request.
#[cfg(feature = "redis")]
struct Deciding<S, B> {
    decision: DecisionFuture,
    layer: RateLimitLayer,
    pending: Option<(S, Request<B>)>,
}

pin_project! {
    /// A queued request: call the service with the request once `sleep` ends, then add the
    /// headers.
    struct Waiting<S, B> {
        #[pin]
        sleep: Sleep,
        pending: Option<(S, Request<B>, QuotaHeaders)>,
    }
}

impl<F, S, B> ResponseFuture<F, S, B> {
    #[inline]
    pub(super) fn called(fut: F, headers: QuotaHeaders) -> Self {
        ResponseFuture {
            fut: Some(fut),
            rest: headers.map(|(policy, quota)| Box::new(Rest::Headers(policy, quota))),
        }
    }

    pub(super) fn waiting(sleep: Sleep, svc: S, req: Request<B>, headers: QuotaHeaders) -> Self {
        ResponseFuture {
            fut: None,
            rest: Some(Box::new(Rest::Waiting(Box::pin(Waiting {
                sleep,
                pending: Some((svc, req, headers)),
            })))),
        }
    }

    #[cfg(feature = "redis")]
    pub(super) fn deciding(
        decision: DecisionFuture,
        layer: RateLimitLayer,
        svc: S,
        req: Request<B>,
    ) -> Self {
        ResponseFuture {
            fut: None,
            rest: Some(Box::new(Rest::Deciding(Box::new(Deciding {
                decision,
                layer,
                pending: Some((svc, req)),
            })))),
        }
    }

    pub(super) fn rejected(err: RateLimited) -> Self {
        ResponseFuture {
            fut: None,
            rest: Some(Box::new(Rest::Rejected(err))),
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
        let mut this = self.project();
        loop {
            if let Some(fut) = this.fut.as_mut().as_pin_mut() {
                // Without headers to add, hand the inner poll on as it is: taking the response
                // out and wrapping it again cost two moves of it. (Like any future, the inner
                // one is not polled again after `Ready`, so `fut` is left as it is.)
                if this.rest.is_none() {
                    return fut.poll(cx);
                }
                let mut res = ready!(fut.poll(cx))?;
                if let Some(Rest::Headers(policy, quota)) = this.rest.take().map(|rest| *rest) {
                    res.headers_mut().insert(RATELIMIT_POLICY, policy);
                    if let Some(quota) = quota {
                        res.headers_mut().insert(RATELIMIT, quota);
                    }
                }
                return Poll::Ready(Ok(res));
            }
            // Not admitted yet: queued, or rejected.
            let (mut svc, req, headers) = match this.rest.as_deref_mut() {
                Some(Rest::Waiting(waiting)) => {
                    let waiting = waiting.as_mut().project();
                    ready!(waiting.sleep.poll(cx));
                    match waiting.pending.take() {
                        Some(pending) => pending,
                        None => return Poll::Pending,
                    }
                }
                #[cfg(feature = "redis")]
                Some(Rest::Deciding(deciding)) => {
                    let decision = ready!(deciding.decision.as_mut().poll(cx));
                    let Some((svc, req)) = deciding.pending.take() else {
                        return Poll::Pending;
                    };
                    let layer = &deciding.layer;
                    let headers =
                        |quota| layer.exposes_headers().then(|| layer.quota_headers(&quota));
                    match decision {
                        Decision::Allow(quota) => (svc, req, headers(quota)),
                        Decision::Delay { delay, quota } => {
                            let headers = headers(quota);
                            *this.rest = Some(Box::new(Rest::Waiting(Box::pin(Waiting {
                                sleep: tokio::time::sleep(delay),
                                pending: Some((svc, req, headers)),
                            }))));
                            continue;
                        }
                        Decision::Reject(err) => {
                            *this.rest = None;
                            return Poll::Ready(Ok(err.to_response()));
                        }
                    }
                }
                Some(Rest::Rejected(err)) => {
                    let err = *err;
                    *this.rest = None;
                    return Poll::Ready(Ok(err.to_response()));
                }
                // Polled after completion.
                Some(Rest::Headers(..)) | None => return Poll::Pending,
            };
            // The wait is over. The service was made ready before `call` moved it here.
            this.fut.set(Some(svc.call(req)));
            *this.rest = headers.map(|(policy, quota)| Box::new(Rest::Headers(policy, quota)));
        }
    }
}
