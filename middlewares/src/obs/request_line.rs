//! One request's access-log fields, written by [`AccessLog::write_request`] straight from the
//! `obs` layer: typed values appended to the line, no `tracing` event, no field visitor, no
//! `core::fmt` for the common values.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

use super::access_log::{three_digits, write_formatted, write_millis, write_value};
use super::trace::RequestId;
#[cfg(doc)]
use super::AccessLog;
use super::LogAddr;

/// Bytes a line takes besides its target, but for long upstream names or ids.
const LINE_ROOM: usize = 192;

/// The fields of one access-log line, in the order they are written (absent ones left out).
pub(crate) struct RequestLine<'a> {
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// The method label (one of the fixed set, or `_OTHER`).
    pub method: &'a str,
    /// The request target as sent.
    pub target: &'a Uri,
    /// The status sent (`499` when the client left first).
    pub status: u16,
    /// Response body bytes sent (the proxy).
    pub bytes: Option<u64>,
    /// From the request head to the end.
    pub duration: Duration,
    /// The last backend tried (the proxy).
    pub upstream: Option<&'a str>,
    /// Upstream attempts (the proxy).
    pub attempts: Option<u32>,
    /// The request id, the client's or made.
    pub request_id: Option<&'a RequestId>,
    /// Why the request failed.
    pub error: Option<&'a dyn fmt::Display>,
}

impl fmt::Debug for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLine")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl RequestLine<'_> {
    /// Appends ` client=… method=…` (everything after the timestamp).
    pub(crate) fn append(&self, buf: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        // Room for a usual line at once, instead of a capacity check growing it per field.
        buf.reserve(
            LINE_ROOM
                + self
                    .target
                    .path_and_query()
                    .map_or(0, |pq| pq.as_str().len()),
        );
        if let Some(client) = self.client {
            buf.extend_from_slice(b" client=");
            LogAddr(client).append(buf);
        }
        buf.extend_from_slice(b" method=");
        write_value(buf, self.method);
        buf.extend_from_slice(b" target=");
        match self.target.path_and_query() {
            // Origin form, the usual one: the text as received.
            Some(pq) if self.target.scheme().is_none() => write_value(buf, pq.as_str()),
            _ => write_formatted(buf, format_args!("{}", self.target)),
        }
        buf.extend_from_slice(b" status=");
        if (100..1000).contains(&self.status) {
            buf.extend_from_slice(&three_digits(u32::from(self.status)));
        } else {
            buf.extend_from_slice(number.format(self.status).as_bytes());
        }
        if let Some(bytes) = self.bytes {
            buf.extend_from_slice(b" bytes=");
            buf.extend_from_slice(number.format(bytes).as_bytes());
        }
        buf.extend_from_slice(b" duration_ms=");
        write_millis(buf, self.duration);
        if let Some(upstream) = self.upstream {
            buf.extend_from_slice(b" upstream=");
            write_value(buf, upstream);
        }
        if let Some(attempts) = self.attempts {
            buf.extend_from_slice(b" attempts=");
            match u8::try_from(attempts) {
                Ok(digit @ 0..=9) => buf.push(b'0' + digit),
                _ => buf.extend_from_slice(number.format(attempts).as_bytes()),
            }
        }
        match self.request_id {
            Some(RequestId::Client(v)) => {
                buf.extend_from_slice(b" request_id=");
                write_value(buf, v.to_str().unwrap_or(""));
            }
            Some(RequestId::Made(id)) => {
                buf.extend_from_slice(b" request_id=");
                buf.extend_from_slice(&super::trace::hex_id(*id));
            }
            None => {}
        }
        if let Some(error) = self.error {
            buf.extend_from_slice(b" error=");
            write_formatted(buf, format_args!("{error}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::AccessLog;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn numbers_past_the_short_forms_are_written_whole() {
        let line = |status, attempts| {
            let mut buf = Vec::new();
            RequestLine {
                client: None,
                method: "GET",
                target: &Uri::from_static("/"),
                status,
                bytes: None,
                duration: Duration::ZERO,
                upstream: None,
                attempts: Some(attempts),
                request_id: None,
                error: None,
            }
            .append(&mut buf);
            String::from_utf8(buf).unwrap()
        };
        assert!(line(200, 1).contains(" status=200 "), "{}", line(200, 1));
        assert!(line(200, 1).ends_with(" attempts=1"));
        assert!(line(1000, 12).contains(" status=1000 "));
        assert!(line(99, 10).contains(" status=99 "));
        assert!(line(99, 10).ends_with(" attempts=10"));
        assert!(line(200, 0).ends_with(" attempts=0"));
    }

    /// The direct line and the tracing layer's line for the same request are the same, past
    /// the timestamp.
    #[test]
    fn the_direct_line_matches_the_event_line() {
        use tracing_subscriber::layer::SubscriberExt;
        let direct = Shared::default();
        let via_event = Shared::default();
        // A target that needs quoting and escaping in the line.
        let target: Uri = "/a\"b?c=\u{e9}".parse().unwrap();
        let id = RequestId::Made(0x4bf92f3577b34da6a3ce929d0e0e4736);
        let client: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let error = std::io::Error::other("upstream \"gone\"");
        AccessLog::new(direct.clone()).write_request(&RequestLine {
            client: Some(client),
            method: "GET",
            target: &target,
            status: 502,
            bytes: Some(12),
            duration: Duration::from_micros(1_234),
            upstream: Some("127.0.0.1:9000"),
            attempts: Some(2),
            request_id: Some(&id),
            error: Some(&error),
        });
        let log = AccessLog::new(via_event.clone());
        let subscriber = tracing_subscriber::registry().with(log.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: crate::obs::ACCESS_LOG_TARGET,
                client = tracing::field::display(LogAddr(client)),
                method = "GET",
                target = tracing::field::display(&target),
                status = 502u16,
                bytes = 12u64,
                duration_ms = 1.234,
                upstream = "127.0.0.1:9000",
                attempts = 2u32,
                request_id = tracing::field::display(&id),
                error = tracing::field::display(&error),
                "request"
            );
        });
        let strip = |s: &Shared| {
            let text = String::from_utf8(s.0.lock().unwrap().clone()).unwrap();
            text.split_once(' ').unwrap().1.to_owned()
        };
        assert_eq!(strip(&direct), strip(&via_event));
        assert!(
            strip(&direct).contains(" target=\"/a\\\"b?c=\u{e9}\" "),
            "{}",
            strip(&direct)
        );
        assert!(
            strip(&direct).contains(r#"error="upstream \"gone\"""#),
            "{}",
            strip(&direct)
        );
    }
}
