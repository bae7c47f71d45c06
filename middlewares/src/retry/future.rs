//! The response future of [`Retry`](super::Retry).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use pin_project_lite::pin_project;
use tokio::time::{sleep, sleep_until, Instant, Sleep};
use tower_service::Service;

use super::body::{ReplayBody, Source};
use super::error::AttemptTimedOut;
use super::layer::Shared;
use super::policy::ResponseClass;
#[cfg(feature = "circuit-breaker")]
use crate::circuit_breaker::CircuitOpen;
use crate::cut_off;
use crate::Rejection;

pin_project! {
    /// Response future of [`Retry`](super::Retry): drives the attempts, backoff and per-try
    /// timeouts of one request without boxing.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        kind: Kind<S::Future, S, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, S, B> {
        // A request that is never retried: one attempt, maybe bounded by the per-try timeout.
        // Timers are boxed and made only when a per-try timeout is set or a backoff starts: an
        // inline `Option<Sleep>` made every future ~100 bytes larger, and futures are moved.
        Once { #[pin] fut: F, timer: Option<Pin<Box<Sleep>>>, timeout: Duration },
        // The single attempt was cut off by its per-try timeout (and dropped).
        CutOff { timeout: Duration },
        // A retryable request. `timer` is the per-try timeout during an attempt and the backoff
        // sleep between attempts (one `Sleep`, reset, never both at once).
        Retrying { #[pin] state: State<F>, timer: Option<Pin<Box<Sleep>>>, ctx: RetryCtx<S, B> },
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt in flight.
        Attempt { #[pin] fut: F },
        // Waiting out the backoff on `timer`.
        Backoff,
        // Waiting for the service clone to be ready for the next attempt.
        Ready,
    }
}

/// What a retryable request needs for later attempts.
struct RetryCtx<S, B> {
    /// The service instance the first attempt was made on; polled ready before each retry.
    service: S,
    head: Head,
    source: Source,
    shared: Arc<Shared>,
    /// Retries made so far.
    retries: u32,
    _body: PhantomData<fn(B)>,
}

/// The head of a retryable request, kept for its later attempts: the fields of
/// `http::request::Parts`, which cannot be built outside `http` except by taking a request apart.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl Head {
    /// Clones the head of `req`.
    // Always inlined: called out of line, the clone was built in the callee's frame and copied
    // (over 200 bytes) into the caller's once more.
    #[inline(always)]
    pub(crate) fn of<B>(req: &Request<B>) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
        }
    }

    /// A request with a copy of this head and `body`.
    fn request<B>(&self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }
}

/// How one attempt ended.
enum Outcome<R, E> {
    Response(R),
    Error(E),
    TimedOut,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    /// A single attempt, bounded by `per_try_timeout` if set.
    #[inline]
    pub(crate) fn once(fut: S::Future, per_try_timeout: Option<Duration>) -> Self {
        ResponseFuture {
            kind: Kind::Once {
                fut,
                timer: per_try_timeout.map(|d| Box::pin(sleep(d))),
                timeout: per_try_timeout.unwrap_or_default(),
            },
        }
    }

    /// The first attempt `fut` of a retryable request, started on `service`.
    // Inlined so the head is written straight into the caller's future, not copied twice.
    #[inline(always)]
    pub(crate) fn retrying(
        fut: S::Future,
        service: S,
        head: Head,
        source: Source,
        shared: Arc<Shared>,
    ) -> Self {
        let timer = shared.policy.per_try_timeout.map(|d| Box::pin(sleep(d)));
        ResponseFuture {
            kind: Kind::Retrying {
                state: State::Attempt { fut },
                timer,
                ctx: RetryCtx {
                    service,
                    head,
                    source,
                    shared,
                    retries: 0,
                    _body: PhantomData,
                },
            },
        }
    }
}

impl<S, B> RetryCtx<S, B> {
    /// Decides whether to retry after `outcome`; on yes, takes a token from the budget and
    /// returns when the next attempt may start.
    fn next_attempt_at<R, E>(&mut self, outcome: &Outcome<Response<R>, E>) -> Option<Instant> {
        let shared = &*self.shared;
        let policy = &shared.policy;
        let retry_after = match outcome {
            // A local circuit breaker failed fast on purpose; trying again would only wait for it.
            #[cfg(feature = "circuit-breaker")]
            Outcome::Response(res) if res.extensions().get::<CircuitOpen>().is_some() => {
                return None
            }
            Outcome::Response(res) => match policy.classify_response(res.status(), res.headers()) {
                ResponseClass::Final => return None,
                ResponseClass::RetryAfterTooLong(wait) => {
                    tracing::debug!(?wait, max = ?policy.max_retry_after, "Retry-After above the cap; not retrying");
                    return None;
                }
                ResponseClass::Retryable { retry_after } => retry_after,
            },
            Outcome::Error(_) | Outcome::TimedOut => None,
        };
        if !self.source.is_replayable() {
            tracing::debug!(
                "request body not fully captured within the replay limit; not retrying"
            );
            return None;
        }
        let at = shared.grant_retry(self.retries, retry_after, Instant::now())?;
        self.retries += 1;
        Some(at)
    }

    fn per_try_timeout(&self) -> Option<Duration> {
        self.shared.policy.per_try_timeout
    }

    fn next_request(&self) -> Request<ReplayBody<B>>
    where
        B: http_body::Body,
    {
        self.head.request(ReplayBody::replay(&self.source))
    }
}

/// Points `timer` at `deadline`, reusing the `Sleep` when there is one.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant) {
    match timer {
        Some(sleep) => sleep.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(sleep_until(deadline))),
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    B: http_body::Body,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        match kind.as_mut().project() {
            KindProj::Once {
                fut,
                timer,
                timeout,
            } => {
                if let Poll::Ready(result) = fut.poll(cx) {
                    return Poll::Ready(result);
                }
                if let Some(sleep) = timer {
                    ready!(sleep.as_mut().poll(cx));
                    tracing::debug!(?timeout, "attempt timed out");
                    let timeout = *timeout;
                    // Dropped as cut off by a deadline: a breaker inside counts a failure.
                    cut_off::by_deadline(|| kind.set(Kind::CutOff { timeout }));
                    return Poll::Ready(Ok(AttemptTimedOut::new(timeout).to_response()));
                }
                Poll::Pending
            }
            KindProj::CutOff { timeout } => {
                Poll::Ready(Ok(AttemptTimedOut::new(*timeout).to_response()))
            }
            KindProj::Retrying {
                mut state,
                timer,
                ctx,
            } => loop {
                match state.as_mut().project() {
                    StateProj::Attempt { fut } => {
                        let outcome = match fut.poll(cx) {
                            // Fast path: a status that is never retried is final whatever else
                            // `next_attempt_at` would look at; skip the `Outcome` round trip.
                            Poll::Ready(Ok(res))
                                if !ctx.shared.policy.is_retryable_status(res.status()) =>
                            {
                                return Poll::Ready(Ok(res));
                            }
                            Poll::Ready(Ok(res)) => Outcome::Response(res),
                            Poll::Ready(Err(e)) => Outcome::Error(e),
                            Poll::Pending => match (ctx.per_try_timeout(), timer.as_mut()) {
                                (Some(_), Some(sleep)) => {
                                    ready!(sleep.as_mut().poll(cx));
                                    Outcome::TimedOut
                                }
                                _ => return Poll::Pending,
                            },
                        };
                        let timed_out = matches!(outcome, Outcome::TimedOut);
                        let next = ctx.next_attempt_at(&outcome);
                        if timed_out {
                            // The attempt is dropped as cut off by a deadline, so a breaker
                            // inside counts it as a failure rather than a cancellation.
                            cut_off::by_deadline(|| state.set(State::Backoff));
                        }
                        let Some(at) = next else {
                            return Poll::Ready(match outcome {
                                Outcome::Response(res) => Ok(res),
                                Outcome::Error(e) => Err(e),
                                Outcome::TimedOut => {
                                    let timeout = ctx.per_try_timeout().unwrap_or_default();
                                    tracing::debug!(?timeout, "last attempt timed out");
                                    Ok(AttemptTimedOut::new(timeout).to_response())
                                }
                            });
                        };
                        // Drop the failed response (and its body) or the abandoned attempt now,
                        // not after the backoff.
                        drop(outcome);
                        state.set(State::Backoff);
                        arm(timer, at);
                    }
                    StateProj::Backoff => {
                        if let Some(sleep) = timer.as_mut() {
                            ready!(sleep.as_mut().poll(cx));
                        }
                        state.set(State::Ready);
                    }
                    StateProj::Ready => {
                        if let Err(e) = ready!(ctx.service.poll_ready(cx)) {
                            return Poll::Ready(Err(e));
                        }
                        let fut = ctx.service.call(ctx.next_request());
                        if let Some(d) = ctx.per_try_timeout() {
                            arm(timer, Instant::now() + d);
                        }
                        state.set(State::Attempt { fut });
                    }
                }
            },
        }
    }
}
