//! The request body the inner service sees: the original stream, captured for replay, or a
//! replay of what was captured.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A request body fully captured during the first attempt.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    chunks: Vec<Bytes>,
    len: u64,
    trailers: Option<HeaderMap>,
}

/// Where later attempts take their body from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The request had no body: replay an empty one. No allocation.
    Empty,
    /// The first attempt's body fills this slot once it has ended within the limit.
    Capture(Arc<OnceLock<Captured>>),
}

impl Source {
    /// Whether a later attempt can send the same body as the first.
    pub(crate) fn is_replayable(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Capture(slot) => slot.get().is_some(),
        }
    }
}

/// The capture side of a first-attempt body, kept inside the body (no lock per frame); it is
/// published to the shared slot once, when the body ends within the limit.
#[derive(Debug)]
struct Capturer {
    slot: Arc<OnceLock<Captured>>,
    buf: Captured,
    limit: u64,
}

impl Capturer {
    fn finish(self) {
        // The slot is only ever set here, once per request; a second `set` cannot happen.
        let _ = self.slot.set(self.buf);
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // The first attempt: the original body, captured while `capture` is `Some`. Boxed: a
        // `Capturer` is ~140 bytes, which every request moved between layers would carry, while
        // only a request with a body to capture needs one (and allocates its slot anyway).
        Stream { #[pin] body: B, capture: Option<Box<Capturer>> },
        // A later attempt: the captured chunks from `next` on, then the trailers.
        // (`slot` is always filled here: a replay is only made after `Source::is_replayable`.)
        Replay { slot: Arc<OnceLock<Captured>>, next: usize, sent: u64, trailers_sent: bool },
        // A later attempt of a request without a body.
        Empty,
    }
}

pin_project! {
    /// The request body the inner service of [`Retry`](super::Retry) sees.
    ///
    /// On the first attempt it streams the original body through unchanged (frames are
    /// converted to [`Bytes`], which is free when they already are `Bytes`), keeping a copy of the
    /// data (reference-counted, not copied) while it stays within the replay limit. Later attempts
    /// get a replay of that copy, with the same size hint and trailers. Errors are the original
    /// body's errors, so `ReplayBody<axum::body::Body>` is accepted by axum's `Route`.
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

impl<B: Body> ReplayBody<B> {
    /// The first attempt's body, not captured.
    pub(crate) fn passthrough(body: B) -> Self {
        ReplayBody {
            kind: Kind::Stream {
                body,
                capture: None,
            },
        }
    }

    /// The first attempt's body and the source later attempts replay from; `None` when the body
    /// is known to exceed `limit` (the caller then sends it through uncaptured, not retryable).
    pub(crate) fn capture(body: B, limit: usize) -> Result<(Self, Source), B> {
        if body.is_end_stream() {
            return Ok((Self::passthrough(body), Source::Empty));
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        if body.size_hint().lower() > limit {
            return Err(body);
        }
        let slot = Arc::new(OnceLock::new());
        let capture = Box::new(Capturer {
            slot: Arc::clone(&slot),
            buf: Captured::default(),
            limit,
        });
        let body = ReplayBody {
            kind: Kind::Stream {
                body,
                capture: Some(capture),
            },
        };
        Ok((body, Source::Capture(slot)))
    }

    /// A later attempt's body. Call only when [`Source::is_replayable`]; an unfilled slot would
    /// replay as an empty body.
    pub(crate) fn replay(source: &Source) -> Self {
        let kind = match source {
            Source::Empty => Kind::Empty,
            Source::Capture(slot) => Kind::Replay {
                slot: Arc::clone(slot),
                next: 0,
                sent: 0,
                trailers_sent: false,
            },
        };
        ReplayBody { kind }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Stream { mut body, capture } => {
                let frame = match ready!(body.as_mut().poll_frame(cx)) {
                    None => {
                        if let Some(c) = capture.take() {
                            (*c).finish();
                        }
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => {
                        // A failed body cannot be replayed.
                        *capture = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Some(Ok(frame)) => frame.map_data(|mut d| d.copy_to_bytes(d.remaining())),
                };
                if let Some(c) = capture.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        let len = data.len() as u64;
                        if c.buf.len.saturating_add(len) > c.limit {
                            tracing::debug!(
                                limit = c.limit,
                                "request body exceeds the replay limit; it will not be retried"
                            );
                            *capture = None;
                        } else if len > 0 {
                            c.buf.len += len;
                            c.buf.chunks.push(data.clone());
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        c.buf.trailers = Some(trailers.clone());
                    }
                }
                // Consumers such as hyper stop polling once `is_end_stream` is true, so the end
                // must be detected here, not only on `None`.
                if body.is_end_stream() {
                    if let Some(c) = capture.take() {
                        (*c).finish();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            KindProj::Replay {
                slot,
                next,
                sent,
                trailers_sent,
            } => {
                let Some(captured) = slot.get() else {
                    return Poll::Ready(None);
                };
                if let Some(chunk) = captured.chunks.get(*next) {
                    *next += 1;
                    *sent += chunk.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                if !*trailers_sent {
                    *trailers_sent = true;
                    if let Some(trailers) = &captured.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                    }
                }
                Poll::Ready(None)
            }
            KindProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream { body, .. } => body.is_end_stream(),
            Kind::Replay {
                slot,
                next,
                trailers_sent,
                ..
            } => match slot.get() {
                Some(c) => *next >= c.chunks.len() && (*trailers_sent || c.trailers.is_none()),
                None => true,
            },
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream { body, .. } => body.size_hint(),
            Kind::Replay { slot, sent, .. } => {
                SizeHint::with_exact(slot.get().map_or(0, |c| c.len.saturating_sub(*sent)))
            }
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Stream { capture, .. } => {
                if capture.is_some() {
                    "Stream(capturing)"
                } else {
                    "Stream"
                }
            }
            Kind::Replay { .. } => "Replay",
            Kind::Empty => "Empty",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>;

    fn chunks(parts: &[&'static str]) -> StreamBody<futures_util::stream::Iter<Frames>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn empty_body_needs_no_capture() {
        let (body, source) = ReplayBody::capture(Full::new(Bytes::new()), 10).unwrap();
        assert!(matches!(source, Source::Empty));
        assert!(source.is_replayable());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
        let replay = ReplayBody::<Full<Bytes>>::replay(&source);
        assert!(replay.is_end_stream());
    }

    #[tokio::test]
    async fn captured_body_replays_identically() {
        let (body, source) = ReplayBody::capture(chunks(&["ab", "cd", "e"]), 5).unwrap();
        assert!(!source.is_replayable(), "nothing read yet");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcde");
        assert!(source.is_replayable());
        for _ in 0..2 {
            let replay = ReplayBody::<Full<Bytes>>::replay(&source);
            assert_eq!(replay.size_hint().exact(), Some(5));
            assert_eq!(replay.collect().await.unwrap().to_bytes(), "abcde");
        }
    }

    #[tokio::test]
    async fn over_limit_body_is_streamed_but_not_replayable() {
        let (body, source) = ReplayBody::capture(chunks(&["abc", "def"]), 5).unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
        assert!(!source.is_replayable());
    }

    #[tokio::test]
    async fn exact_hint_over_limit_skips_capture() {
        assert!(ReplayBody::capture(Full::new(Bytes::from_static(b"abcdef")), 5).is_err());
    }

    #[tokio::test]
    async fn end_detected_by_is_end_stream() {
        let (mut body, source) =
            ReplayBody::capture(Full::new(Bytes::from_static(b"xyz")), 5).unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "xyz");
        assert!(body.is_end_stream());
        assert!(
            source.is_replayable(),
            "captured without polling for `None`"
        );
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<_, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hi"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let (body, source) =
            ReplayBody::capture(StreamBody::new(futures_util::stream::iter(frames)), 5).unwrap();
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        let replay = ReplayBody::<Full<Bytes>>::replay(&source);
        let collected = replay.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "hi");
    }
}
