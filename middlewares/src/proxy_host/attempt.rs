//! [`AttemptTimeout`]: a limit on one attempt's time to the upstream's response head, as far as
//! Pingora's peer options allow one.

use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use tokio::time::Instant;

/// A per-attempt limit on the time to the upstream's response head. Kept in a policy's or a
/// proxy's per-request context: [`start`](Self::start) it with each attempt's peer, call
/// [`head_arrived`](Self::head_arrived) from `upstream_response_filter`, and ask
/// [`fired`](Self::fired) on a failed attempt's error.
///
/// Pingora bounds an upstream exchange only by per-operation timeouts on the peer
/// (`PeerOptions::{total_connection_timeout, read_timeout, write_timeout}`), fixed when the
/// attempt starts: the same read timeout applies to every read of the attempt, head and body
/// alike, and no phase reaches the upstream connection once the head arrived to change it. So
/// a limit on the time to the head is enforced in two parts:
/// - the attempt's connect, read and write timeouts are clamped to the limit: an upstream that
///   accepts and then says nothing is cut exactly `limit` after the read for the head began, a
///   connect or a request write that stalls for `limit` fails;
/// - when the head has arrived, it is refused if it came later than `limit` after the attempt
///   started (an upstream that trickles its head a byte at a time keeps each read short), so a
///   late head never goes downstream: the attempt fails as a read timeout instead.
///
/// What it does **not** bound exactly: the wall-clock wait for a trickling head (each read is
/// bounded, not their sum; the head is refused when it completes). And it bounds more than
/// the head: every read of that attempt's response body (and every write of a request body
/// still going) is limited to `limit` too, so a body that pauses longer is cut, because
/// Pingora keeps the attempt's timeouts for the body.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttemptTimeout {
    /// When the current attempt must have its response head by; `None` once it arrived.
    head_by: Option<Instant>,
    /// Which of the attempt's connect, read and write timeouts this limit shortened: a
    /// timeout of that kind in this attempt is this limit's.
    clamped: Clamped,
    /// The head came too late and was refused.
    late: bool,
}

impl AttemptTimeout {
    /// Starts an attempt on `peer` with `limit`: clamps its connect, read and write timeouts to
    /// `limit` (never lengthens them) and remembers when the head is due.
    pub fn start(&mut self, peer: &mut HttpPeer, limit: Duration) {
        self.head_by = Instant::now().checked_add(limit);
        self.clamped = Clamped::apply(peer, limit);
        self.late = false;
    }

    /// With the attempt's response head: `Err` (an upstream read timeout) when it came later
    /// than the limit, so the late head is not forwarded and the attempt fails (Pingora asks
    /// `error_while_proxy` whether to retry it). `Ok` when no attempt is running.
    pub fn head_arrived(&mut self) -> Result<()> {
        match self.head_by.take() {
            Some(by) if Instant::now() >= by => {
                self.late = true;
                Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "upstream response head came after the attempt's limit",
                )
                .into_up())
            }
            _ => Ok(()),
        }
    }

    /// Whether the failed attempt's error `e` is this limit expiring: a timeout of an operation
    /// it shortened, or a late head refused by [`head_arrived`](Self::head_arrived).
    pub fn fired(&self, e: &Error) -> bool {
        self.clamped.timed_out(e) || (self.late && e.etype() == &ErrorType::ReadTimedout)
    }
}

/// Which of a peer's connect, read and write timeouts a limit shortened (the request deadline's
/// or an attempt's), so that a timeout error can be told apart from the peer's own, longer one.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Clamped {
    connect: bool,
    read: bool,
    write: bool,
}

impl Clamped {
    /// Shortens `peer`'s connect, read and write timeouts to `limit` (never lengthens them).
    pub(crate) fn apply(peer: &mut HttpPeer, limit: Duration) -> Clamped {
        let options = &mut peer.options;
        Clamped {
            connect: clamp(&mut options.total_connection_timeout, limit),
            read: clamp(&mut options.read_timeout, limit),
            write: clamp(&mut options.write_timeout, limit),
        }
    }

    /// Whether `e` is a timeout of an operation this limit shortened.
    pub(crate) fn timed_out(&self, e: &Error) -> bool {
        match e.etype() {
            ErrorType::ConnectTimedout => self.connect,
            ErrorType::ReadTimedout => self.read,
            ErrorType::WriteTimedout => self.write,
            _ => false,
        }
    }
}

/// Shortens `timeout` to `limit`; whether it did.
fn clamp(timeout: &mut Option<Duration>, limit: Duration) -> bool {
    match timeout {
        Some(t) if *t <= limit => false,
        _ => {
            *timeout = Some(limit);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> HttpPeer {
        let mut peer = HttpPeer::new("127.0.0.1:9", false, String::new());
        peer.options.total_connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(60));
        peer.options.write_timeout = Some(Duration::from_secs(60));
        peer
    }

    #[tokio::test(start_paused = true)]
    async fn clamps_the_attempt_and_refuses_a_late_head() {
        let mut timer = AttemptTimeout::default();
        let mut p = peer();
        timer.start(&mut p, Duration::from_secs(2));
        assert_eq!(p.options.read_timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.options.write_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            p.options.total_connection_timeout,
            Some(Duration::from_secs(2))
        );
        let read = Error::explain(ErrorType::ReadTimedout, "x");
        assert!(timer.fired(&read));
        assert!(!timer.fired(&Error::explain(ErrorType::ConnectRefused, "x")));

        tokio::time::advance(Duration::from_secs(3)).await;
        let late = timer.head_arrived().unwrap_err();
        assert_eq!(late.etype(), &ErrorType::ReadTimedout);
        assert!(timer.fired(&late));
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_limit_leaves_shorter_timeouts_alone() {
        let mut timer = AttemptTimeout::default();
        let mut p = peer();
        timer.start(&mut p, Duration::from_secs(30));
        assert_eq!(p.options.read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(
            p.options.total_connection_timeout,
            Some(Duration::from_secs(5))
        );
        // The connect timeout that fires is the peer's own, not this limit's.
        assert!(!timer.fired(&Error::explain(ErrorType::ConnectTimedout, "x")));
        assert!(timer.fired(&Error::explain(ErrorType::ReadTimedout, "x")));
        timer.start(&mut p, Duration::from_secs(90));
        assert!(!timer.fired(&Error::explain(ErrorType::ReadTimedout, "x")));
        assert!(timer.head_arrived().is_ok());
        assert!(!timer.fired(&Error::explain(ErrorType::ConnectRefused, "x")));
    }
}
