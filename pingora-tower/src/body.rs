//! [`PingoraBody`]: a request body read from a Pingora session as the service polls it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{mpsc, Notify};

/// The error a [`PingoraBody`] yields when the client's body could not be read (the connection
/// broke, the framing was invalid, or a read timed out).
#[derive(Debug, Clone)]
pub struct BodyError {
    message: Arc<str>,
}

impl BodyError {
    pub(crate) fn new(message: impl Into<Arc<str>>) -> Self {
        BodyError {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body read failed: {}", self.message)
    }
}

impl std::error::Error for BodyError {}

/// The request body handed to a tower service by [`ServeTower`](crate::ServeTower).
///
/// Chunks are read from the client only while the service polls this body: a bounded channel of
/// one chunk sits between the connection driver and the service, so a slow handler applies
/// backpressure to the client instead of buffering. When the client sent
/// `Expect: 100-continue`, the `100 Continue` is written the first time this body is polled.
#[derive(Debug)]
pub struct PingoraBody {
    rx: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
    /// Woken once on the first poll; the driver waits for it before reading from the client.
    demand: Option<Arc<Notify>>,
    remaining: Option<u64>,
}

impl PingoraBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        PingoraBody {
            rx: None,
            demand: None,
            remaining: Some(0),
        }
    }

    /// A body fed by a connection driver; `content_length` is the declared length, if any.
    pub(crate) fn channel(
        content_length: Option<u64>,
    ) -> (Self, mpsc::Sender<Result<Bytes, BodyError>>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(1);
        let demand = Arc::new(Notify::new());
        let body = PingoraBody {
            rx: Some(rx),
            demand: Some(demand.clone()),
            remaining: content_length,
        };
        (body, tx, demand)
    }
}

impl Default for PingoraBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl http_body::Body for PingoraBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(demand) = this.demand.take() {
            demand.notify_one();
        }
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(remaining) = this.remaining.as_mut() {
                    *remaining = remaining.saturating_sub(chunk.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.rx = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.rx = None;
                this.remaining = Some(0);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
