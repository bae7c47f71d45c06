//! The response future of [`CircuitBreaker`](super::CircuitBreaker).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::breaker::{Outcome, Permit};
use super::error::CircuitOpen;
#[cfg(feature = "timeout")]
use crate::timeout::Elapsed;
use crate::Rejection;

pin_project! {
    /// Either the inner call, holding its breaker permit until it completes, or the immediate
    /// `503` of an open breaker.
    ///
    /// A `5xx` answer of a timeout layer for a deadline the client asked for is not counted.
    ///
    /// Dropping it before completion (a cancelled call) drops the permit unrecorded, which gives
    /// a half-open trial slot back; unless a deadline of this crate cut the call off, which
    /// counts as a failure (see [`Permit`]).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
        },
        Open {
            open: CircuitOpen,
        },
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn called(future: F, permit: Permit) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn open(open: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Open { open },
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
        match self.project().kind.project() {
            KindProj::Called { future, permit } => {
                // The inner poll is handed on as it is, only looked at: taking the response out
                // and wrapping it again would move it twice.
                let poll = future.poll(cx);
                if let Poll::Ready(result) = &poll {
                    if let Some(permit) = permit.take() {
                        match result {
                            // A timeout inside answered for a deadline the client asked for:
                            // not the backend's failure (read only on a 5xx answer).
                            Ok(res)
                                if res.status().is_server_error() && is_client_deadline(res) =>
                            {
                                permit.finish(Outcome::Ignored)
                            }
                            Ok(res) => permit.finish_with(Ok(res.status())),
                            Err(_) => permit.finish_with(Err(())),
                        }
                    }
                }
                poll
            }
            KindProj::Open { open } => Poll::Ready(Ok(open.to_response())),
        }
    }
}

/// Whether `res` is a timeout layer's answer to a deadline the client shortened (only a timeout
/// layer of this crate answers so; without the `timeout` feature there is none).
fn is_client_deadline<B>(res: &Response<B>) -> bool {
    #[cfg(feature = "timeout")]
    return res
        .extensions()
        .get::<Elapsed>()
        .is_some_and(Elapsed::is_client_deadline);
    #[cfg(not(feature = "timeout"))]
    {
        let _ = res;
        false
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("circuit_breaker::ResponseFuture")
    }
}
