//! [`TimedStream`]: a client connection on which every wait has a deadline.
//!
//! Pingora bounds each read of a request head or body on its own (60 s) and waits forever for
//! the next request on a keep-alive connection. This wrapper sits under the HTTP session and
//! enforces [`ClientLimits`] itself, knowing only where a connection is between requests:
//! the harness marks the start of each request ([`TimedStream::await_next_request`]), and the
//! wrapper finds the end of the head by watching for its empty line in the bytes read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::limits::ClientLimits;

/// What the harness writes when a request head misses its deadline.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A client stream that fails a read or write once it has waited longer than its
/// [`ClientLimits`] allow, and answers `408` to a request head that arrives too slowly.
#[derive(Debug)]
pub(crate) struct TimedStream {
    inner: Stream,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    body_timeout: Duration,
    send_timeout: Duration,
    phase: Phase,
    read_timer: Pin<Box<Sleep>>,
    /// The deadline `read_timer` is set to, if armed.
    read_armed: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    /// Whether `write_timer` counts down for a write that is waiting.
    write_armed: bool,
    /// Last read or write progress, kept only on multiplexed (h2) connections.
    last_activity: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No byte of the next request yet: wait until `deadline`, then close quietly.
    Idle { deadline: Instant, first: bool },
    /// Part of a request head arrived; the rest must be in by `deadline`.
    Head { deadline: Instant, scan: HeadScan },
    /// After the head: each read may wait `body_timeout`.
    Body,
    /// HTTP/2: closed after `keepalive_timeout` without any read or write.
    Multiplexed,
    /// The head deadline passed: writing the `408` (`written` bytes so far), then failing.
    Rejecting { written: usize },
    /// Timed out; every further read fails.
    Failed,
}

/// Where the scan for the head's terminating empty line stands. Like the HTTP/1 parser, it
/// skips empty lines before the request line and accepts a bare `\n` as a line end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadScan {
    /// Only empty lines so far.
    Start,
    /// Inside a line.
    Line,
    /// Just after a line end.
    LineEnd,
    /// A line end and a `\r`.
    LineEndCr,
}

impl HeadScan {
    /// Feeds `bytes`; returns the state and whether the head ended inside them.
    fn feed(mut self, bytes: &[u8]) -> (Self, bool) {
        for &b in bytes {
            self = match (self, b) {
                (HeadScan::Start, b'\r' | b'\n') => HeadScan::Start,
                (HeadScan::LineEnd | HeadScan::LineEndCr, b'\n') => return (self, true),
                (HeadScan::LineEnd, b'\r') => HeadScan::LineEndCr,
                (_, b'\n') => HeadScan::LineEnd,
                _ => HeadScan::Line,
            };
        }
        (self, false)
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl TimedStream {
    /// Wraps a newly accepted connection: its first request head must be complete within
    /// `header_timeout` of now.
    pub(crate) fn new(inner: Stream, limits: &ClientLimits) -> Self {
        let now = Instant::now();
        let deadline = now + limits.header_timeout;
        TimedStream {
            inner,
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            body_timeout: limits.body_timeout,
            send_timeout: limits.send_timeout,
            phase: Phase::Idle {
                deadline,
                first: true,
            },
            read_timer: Box::pin(tokio::time::sleep_until(deadline)),
            read_armed: Some(deadline),
            write_timer: Box::pin(tokio::time::sleep_until(deadline)),
            write_armed: false,
            last_activity: now,
        }
    }

    /// The previous exchange is over: the next request's first byte must come within
    /// `keepalive_timeout`.
    pub(crate) fn await_next_request(&mut self) {
        self.phase = Phase::Idle {
            deadline: Instant::now() + self.keepalive_timeout,
            first: false,
        };
    }

    /// The connection speaks HTTP/2: only its overall idleness is bounded here.
    pub(crate) fn multiplexed(&mut self) {
        self.phase = Phase::Multiplexed;
        self.last_activity = Instant::now();
    }

    /// Bytes arrived: start the head deadline on the first one, and leave the head phase once
    /// its empty line is seen.
    fn on_read(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Idle { deadline, first } => {
                let deadline = if first {
                    deadline
                } else {
                    Instant::now() + self.header_timeout
                };
                self.phase = Phase::Head {
                    deadline,
                    scan: HeadScan::Start,
                };
                self.on_read(bytes);
            }
            Phase::Head { deadline, scan } => {
                let (scan, ended) = scan.feed(bytes);
                if ended {
                    self.phase = Phase::Body;
                    // The read timer still holds the head deadline.
                    self.read_armed = None;
                } else {
                    self.phase = Phase::Head { deadline, scan };
                }
            }
            Phase::Body => self.read_armed = None,
            Phase::Multiplexed => self.last_activity = Instant::now(),
            Phase::Rejecting { .. } | Phase::Failed => {}
        }
    }

    /// A read is waiting: arm or check the deadline that applies now.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = match self.phase {
            Phase::Idle { deadline, .. } | Phase::Head { deadline, .. } => deadline,
            Phase::Body => match self.read_armed {
                Some(deadline) => deadline,
                None => Instant::now() + self.body_timeout,
            },
            Phase::Multiplexed => self.last_activity + self.keepalive_timeout,
            Phase::Rejecting { .. } | Phase::Failed => return Poll::Pending,
        };
        if self.read_armed != Some(deadline) {
            self.read_timer.as_mut().reset(deadline);
            self.read_armed = Some(deadline);
        }
        if self.read_timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match self.phase {
            Phase::Head { .. } => {
                self.phase = Phase::Rejecting { written: 0 };
                self.poll_reject(cx)
            }
            Phase::Idle { .. } => {
                // Nothing of a request arrived: the HTTP session closes without a word.
                self.phase = Phase::Failed;
                Poll::Ready(Err(timed_out("no request within the idle timeout")))
            }
            _ => {
                self.phase = Phase::Failed;
                Poll::Ready(Err(timed_out("client read timed out")))
            }
        }
    }

    /// Writes the `408` (bounded by `send_timeout`), then fails the read that was waiting.
    fn poll_reject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Phase::Rejecting { written } = self.phase {
            if written < REQUEST_TIMEOUT.len() {
                let rest = &REQUEST_TIMEOUT[written..];
                match self.poll_timed_write(cx, |s, cx| s.poll_write(cx, rest)) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.phase = Phase::Failed,
                    Poll::Ready(Ok(n)) => {
                        self.phase = Phase::Rejecting {
                            written: written + n,
                        }
                    }
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match self.poll_timed_write(cx, |s, cx| s.poll_flush(cx)) {
                    Poll::Ready(_) => self.phase = Phase::Failed,
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        Poll::Ready(Err(timed_out("request head not received in time")))
    }

    /// Runs a write-side operation, failing it once it has made no progress for
    /// `send_timeout`.
    fn poll_timed_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                self.write_armed = false;
                if self.phase == Phase::Multiplexed {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !self.write_armed {
                    self.write_timer
                        .as_mut()
                        .reset(Instant::now() + self.send_timeout);
                    self.write_armed = true;
                }
                match self.write_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("client write timed out"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Rejecting { .. } => return this.poll_reject(cx),
            Phase::Failed => return Poll::Ready(Err(timed_out("client timed out"))),
            _ => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.on_read(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_read_deadline(cx),
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_timed_write(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_timed_write(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_timed_write(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_timed_write(cx, |s, cx| s.poll_shutdown(cx))
    }
}

#[async_trait]
impl Shutdown for TimedStream {
    async fn shutdown(&mut self) {
        // Flushing what is buffered may wait on the client: bounded like any write.
        let _ = tokio::time::timeout(self.send_timeout, self.inner.shutdown()).await;
    }
}

#[async_trait]
impl Peek for TimedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // Waits for the first bytes of a request (the h2c preface check): the head deadline.
        let deadline = match self.phase {
            Phase::Idle { deadline, .. } | Phase::Head { deadline, .. } => deadline,
            _ => Instant::now() + self.keepalive_timeout,
        };
        match tokio::time::timeout_at(deadline, self.inner.try_peek(buf)).await {
            Ok(peeked) => peeked,
            Err(_) => Err(timed_out("no request within the header timeout")),
        }
    }
}

impl UniqueID for TimedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for TimedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for TimedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for TimedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for TimedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScan;

    fn ends(chunks: &[&[u8]]) -> bool {
        let mut scan = HeadScan::Start;
        for chunk in chunks {
            let (next, ended) = scan.feed(chunk);
            if ended {
                return true;
            }
            scan = next;
        }
        false
    }

    #[test]
    fn finds_the_empty_line_across_reads() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
    }

    #[test]
    fn leading_empty_lines_do_not_end_the_head() {
        assert!(!ends(&[b"\r\n\r\n\r\n", b"GET / HTTP/1.1\r\n"]));
        assert!(ends(&[b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]));
    }
}
