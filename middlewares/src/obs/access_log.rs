//! [`AccessLog`]: the access log events written as one logfmt line each, to a file or any
//! writer, without `core::fmt` on the common path.
//!
//! The layer it gives ([`AccessLog::layer`]) is enabled for events of target
//! [`ACCESS_LOG_TARGET`] only, through tracing-subscriber's per-layer filtering: installed alone,
//! every other callsite (the request span included) is disabled and costs its interest check;
//! installed beside `fmt` or any other layer, it neither sees nor vetoes what they see.
//!
//! A line, fields in the event's order, absent ones left out:
//!
//! ```text
//! ts=2026-12-01T02:45:12.345Z client=1.2.3.4:5 method=GET target=/a?b status=200 bytes=12 duration_ms=0.123 upstream=127.0.0.1:9 attempts=1 request_id=abc
//! ```
//!
//! A value that is empty or holds a space, `"`, `=`, `\`, a control character or anything not
//! ASCII is quoted, with `"` and `\` escaped and control characters written as `\n`, `\r`, `\t`,
//! `\xNN` or `\uNNNN`: a client controls `target` and `request_id`, and must not be able to
//! start a line of its own or send bytes to the terminal of whoever reads the log.
//!
//! A field recorded as a `display` value goes through `core::fmt` (its type's `Display`);
//! [`LogAddr`] is a socket address whose `Display` avoids most of that.
//!
//! # Example
//! ```
//! use middlewares::obs::AccessLog;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # fn main() -> std::io::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("access-log-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("access.log");
//! let log = AccessLog::file(&path)?;
//! let subscriber = tracing_subscriber::registry().with(log.layer());
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::info!(
//!         target: middlewares::obs::ACCESS_LOG_TARGET,
//!         method = "GET",
//!         target = "/a b",
//!         status = 200u16,
//!         "request"
//!     );
//! });
//! let text = std::fs::read_to_string(&path)?;
//! assert!(text.ends_with(" method=GET target=\"/a b\" status=200\n"));
//! assert_eq!(log.write_errors(), 0);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{Filtered, LevelFilter};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::ACCESS_LOG_TARGET;

/// Seconds between two reports of failing writes on stderr.
const REPORT_EVERY_SECS: u64 = 60;

/// The access log writer: a handle on the sink (cheap to clone) that gives the
/// [`layer`](Self::layer) to install, and reads the count of failed writes.
///
/// Each line is formatted into a buffer reused by the thread, then written with one
/// `write_all` under the sink's lock (nginx's unbuffered default: a line reaches the file as
/// the request ends, and lines of concurrent requests never interleave). With
/// [`buffered`](Self::buffered) lines are held in memory and written in batches.
///
/// A failed write never panics and never stops requests: the line (or the batch) is dropped,
/// counted in [`write_errors`](Self::write_errors) and reported on stderr at most once a
/// minute. A writer that blocks does hold the request that writes (as nginx's would).
#[derive(Clone)]
pub struct AccessLog {
    sink: Arc<Sink>,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("write_errors", &self.write_errors())
            .finish_non_exhaustive()
    }
}

/// The shared end: the writer under its lock, the error count, the clock.
struct Sink {
    out: Mutex<Out>,
    write_errors: AtomicU64,
    /// Unix second of the last report on stderr, 0 before the first.
    last_report: AtomicU64,
    /// Time since the Unix epoch.
    clock: WallClock,
}

/// What the lock guards.
struct Out {
    writer: Box<dyn Write + Send>,
    batch: Option<Batch>,
}

/// The buffered mode's settings and held lines.
struct Batch {
    bytes: usize,
    flush_every: Duration,
    pending: Vec<u8>,
    /// When the oldest held line was written (time since the epoch).
    oldest: Duration,
}

impl AccessLog {
    /// Lines to `writer`, one `write_all` each.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        AccessLog {
            sink: Arc::new(Sink {
                out: Mutex::new(Out {
                    writer: Box::new(writer),
                    batch: None,
                }),
                write_errors: AtomicU64::new(0),
                last_report: AtomicU64::new(0),
                clock: WallClock::Counter(quanta::Clock::new()),
            }),
        }
    }

    /// Lines appended to the file at `path`, created if missing. The error names the path.
    pub fn file(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("access log file {path:?}: {e}")))?;
        Ok(AccessLog::new(file))
    }

    /// Holds lines in memory and writes them together once they reach `bytes`, or once the
    /// oldest one held is `flush_every` old: checked as each line comes, and by a thread of
    /// the log's own every `flush_every` (at least 10 ms), so a quiet server's last lines reach
    /// the writer too. Fewer writes per line, at the price of the lines held when the process
    /// dies without dropping the log or calling [`flush`](Self::flush). `bytes == 0` writes
    /// every line at once.
    pub fn buffered(self, bytes: usize, flush_every: Duration) -> Self {
        self.sink.lock().batch = Some(Batch {
            bytes,
            flush_every,
            pending: Vec::new(),
            oldest: Duration::ZERO,
        });
        spawn_flusher(Arc::downgrade(&self.sink), flush_every);
        self
    }

    /// The layer to install: writes the events of target [`ACCESS_LOG_TARGET`] and is enabled
    /// for nothing else, without disabling anything for the layers beside it.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + 'static,
    {
        Filtered::new(
            Writer {
                sink: self.sink.clone(),
            },
            OnlyAccessEvents,
        )
    }

    /// Writes the lines held by [`buffered`](Self::buffered) and flushes the writer.
    pub fn flush(&self) -> io::Result<()> {
        let mut out = self.sink.lock();
        out.write_held()?;
        out.writer.flush()
    }

    /// Writes one request's line directly, without a `tracing` event: the `obs` layer's fast
    /// path ([`ObsLayer::access_log`](super::ObsLayer::access_log)). Same line as the layer
    /// writes for the access event.
    pub(crate) fn write_request(&self, request: &super::RequestLine<'_>) {
        write_line(&self.sink, |buf| request.append(buf));
    }

    /// How many writes failed (each dropped its line, or its batch of lines).
    pub fn write_errors(&self) -> u64 {
        self.sink.write_errors.load(Ordering::Relaxed)
    }
}

fn system_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The thread behind [`AccessLog::buffered`]: every `flush_every`, writes the held lines that
/// are that old; ends once the log is gone.
fn spawn_flusher(sink: Weak<Sink>, flush_every: Duration) {
    let period = flush_every.max(Duration::from_millis(10));
    let flusher = move || {
        let mut synced = None;
        loop {
            std::thread::sleep(period);
            let Some(sink) = sink.upgrade() else { return };
            let now = sink.clock.now(&mut synced);
            sink.write_aged(now);
        }
    };
    // Without the thread (none can be made) lines still go as the next ones come.
    let _ = std::thread::Builder::new()
        .name("access-log-flush".into())
        .spawn(flusher);
}

/// Where a line's time comes from.
enum WallClock {
    /// The system clock, read once a second per thread; in between, that read plus the time the
    /// CPU's counter measured since (`clock_gettime` costs several times a counter read, and a
    /// line's millisecond needs no more than the counter's drift over a second).
    Counter(quanta::Clock),
    /// A clock a unit test moves.
    #[cfg(test)]
    Test(Box<dyn Fn() -> Duration + Send + Sync>),
}

/// A thread's last read of the system clock, with the counter's value at that moment.
#[derive(Debug, Clone, Copy)]
struct Synced {
    raw: u64,
    wall: Duration,
}

impl WallClock {
    /// Time since the Unix epoch, with `synced` the calling thread's last system clock read.
    fn now(&self, synced: &mut Option<Synced>) -> Duration {
        match self {
            WallClock::Counter(counter) => {
                const RESYNC_NANOS: u64 = 1_000_000_000;
                let raw = counter.raw();
                if let Some(s) = synced {
                    let since = counter.delta_as_nanos(s.raw, raw);
                    if since < RESYNC_NANOS {
                        return s.wall + Duration::from_nanos(since);
                    }
                }
                let wall = system_time();
                *synced = Some(Synced { raw, wall });
                wall
            }
            #[cfg(test)]
            WallClock::Test(read) => read(),
        }
    }
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Out> {
        // A panicking writer leaves the sink usable: the lock guards no invariant of ours.
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes (or holds) one finished line.
    fn write_line(&self, line: &[u8], now: Duration) {
        let mut out = self.lock();
        let Some(batch) = &mut out.batch else {
            if let Err(e) = out.writer.write_all(line) {
                self.failed(&e, now);
            }
            return;
        };
        let overflows = !batch.pending.is_empty() && batch.pending.len() + line.len() > batch.bytes;
        if overflows {
            if let Err(e) = out.write_held() {
                self.failed(&e, now);
            }
        }
        let Some(batch) = &mut out.batch else { return };
        // Threads take the lock out of time order: the batch's age is its earliest line's.
        if batch.pending.is_empty() || now < batch.oldest {
            batch.oldest = now;
        }
        batch.pending.extend_from_slice(line);
        let full = batch.pending.len() >= batch.bytes;
        if full || now - batch.oldest >= batch.flush_every {
            if let Err(e) = out.write_held() {
                self.failed(&e, now);
            }
        }
    }

    /// Writes the held lines that are `flush_every` old at `now` (the flusher thread's call).
    fn write_aged(&self, now: Duration) {
        let mut out = self.lock();
        let aged = out.batch.as_ref().is_some_and(|batch| {
            !batch.pending.is_empty() && now.saturating_sub(batch.oldest) >= batch.flush_every
        });
        if aged {
            if let Err(e) = out.write_held() {
                self.failed(&e, now);
            }
        }
    }

    /// Counts a failed write and reports it, at most once a minute.
    fn failed(&self, e: &io::Error, now: Duration) {
        let errors = self.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let secs = now.as_secs().max(1);
        let last = self.last_report.load(Ordering::Relaxed);
        if last != 0 && secs < last.saturating_add(REPORT_EVERY_SECS) && secs >= last {
            return;
        }
        if self
            .last_report
            .compare_exchange(last, secs, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // Not a `tracing` event: this may run inside the dispatch of one. Not `eprintln!`
            // either: it panics when stderr is gone, and this runs inside a request.
            let _ = writeln!(
                io::stderr().lock(),
                "access log: a write failed ({e}); {errors} failed so far, their lines dropped"
            );
        }
    }
}

impl Out {
    /// Writes the lines held in buffered mode (none otherwise); they are dropped if that fails.
    fn write_held(&mut self) -> io::Result<()> {
        let Some(batch) = &mut self.batch else {
            return Ok(());
        };
        if batch.pending.is_empty() {
            return Ok(());
        }
        let result = self.writer.write_all(&batch.pending);
        batch.pending.clear();
        result
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let out = self.out.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = out.write_held();
        let _ = out.writer.flush();
    }
}

/// A socket address for a log field (`client = display(LogAddr(addr))`): displays as
/// [`SocketAddr`](std::net::SocketAddr) does, but an IPv4 one is put together with integer
/// arithmetic and written with one `write_str`, where the standard `Display` goes through
/// `core::fmt` once per octet (the larger part of an access line's formatting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAddr(pub std::net::SocketAddr);

impl LogAddr {
    /// Appends the address to a line: an IPv4 one without `core::fmt` at all.
    pub(super) fn append(&self, buf: &mut Vec<u8>) {
        match self.0 {
            std::net::SocketAddr::V4(v4) => {
                let (out, len) = v4_text(&v4);
                buf.extend_from_slice(&out[..len]);
            }
            std::net::SocketAddr::V6(_) => write_formatted(buf, format_args!("{}", self.0)),
        }
    }
}

impl fmt::Display for LogAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let std::net::SocketAddr::V4(v4) = self.0 else {
            return fmt::Display::fmt(&self.0, f);
        };
        let (out, len) = v4_text(&v4);
        match std::str::from_utf8(&out[..len]) {
            Ok(text) => f.pad(text),
            Err(_) => fmt::Display::fmt(&self.0, f),
        }
    }
}

/// Each octet's decimal text, left-aligned in three bytes, and its length: an address is four
/// table reads instead of a division chain per octet.
static OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut n = 0;
    while n < 256 {
        let b = n as u8;
        table[n] = if b >= 100 {
            ([b'0' + b / 100, b'0' + b / 10 % 10, b'0' + b % 10], 3)
        } else if b >= 10 {
            ([b'0' + b / 10, b'0' + b % 10, 0], 2)
        } else {
            ([b'0' + b, 0, 0], 1)
        };
        n += 1;
    }
    table
};

/// `a.b.c.d:port` in a buffer, and its length.
fn v4_text(v4: &std::net::SocketAddrV4) -> ([u8; 21], usize) {
    // "255.255.255.255:65535"; each octet's three bytes fit before the next is written.
    let mut out = [0u8; 21];
    let mut len = 0;
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        let (text, n) = &OCTETS[usize::from(octet)];
        out[len..len + 3].copy_from_slice(text);
        len += usize::from(*n);
    }
    out[len] = b':';
    len += 1;
    let mut port = itoa::Buffer::new();
    let port = port.format(v4.port()).as_bytes();
    out[len..len + port.len()].copy_from_slice(port);
    len += port.len();
    (out, len)
}

/// The per-layer filter: events of [`ACCESS_LOG_TARGET`], nothing else.
struct OnlyAccessEvents;

impl OnlyAccessEvents {
    fn wants(meta: &Metadata<'_>) -> bool {
        // Not spans; events and `tracing::enabled!` hints (the tower host keeps the request
        // target only when such a hint says the access log is on).
        !meta.is_span() && meta.target() == ACCESS_LOG_TARGET
    }
}

impl<S> Filter<S> for OnlyAccessEvents {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // The access events are `info`; alone, this lets `debug` and `trace` callsites off at
        // their level check.
        Some(LevelFilter::INFO)
    }
}

/// The layer behind the filter: formats and writes.
struct Writer {
    sink: Arc<Sink>,
}

impl<S: Subscriber> Layer<S> for Writer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        write_line(&self.sink, |buf| event.record(&mut Fields { buf }));
    }
}

/// Writes one line to `sink`: the time, the fields `fields` appends, a newline; in the thread's
/// buffer, or a fresh one when that is in use (a field's `Display` that logs an access event
/// itself) or gone (the thread is exiting).
fn write_line(sink: &Sink, fields: impl FnOnce(&mut Vec<u8>)) {
    let mut fields = Some(fields);
    let mut write = |line: &mut Line| {
        if let Some(fields) = fields.take() {
            let now = sink.clock.now(&mut line.synced);
            line.start(now);
            fields(&mut line.buf);
            line.buf.push(b'\n');
            sink.write_line(&line.buf, now);
        }
    };
    let written = LINE.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => write(&mut line),
        Err(_) => write(&mut Line::default()),
    });
    if written.is_err() {
        write(&mut Line::default());
    }
}

thread_local! {
    static LINE: RefCell<Line> = RefCell::new(Line::default());
}

/// A thread's line buffer, its cached timestamp and its last system clock read.
#[derive(Default)]
pub(super) struct Line {
    buf: Vec<u8>,
    clock: TimestampCache,
    synced: Option<Synced>,
}

impl Line {
    /// Starts a line: `ts=` and the time.
    fn start(&mut self, now: Duration) {
        self.buf.clear();
        self.buf.extend_from_slice(b"ts=");
        self.clock.write(&mut self.buf, now);
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of the last second seen: formatted again only when the second
/// changes.
struct TimestampCache {
    second: u64,
    prefix: [u8; 20],
}

impl Default for TimestampCache {
    fn default() -> Self {
        TimestampCache {
            second: u64::MAX,
            prefix: [0; 20],
        }
    }
}

impl TimestampCache {
    /// Appends `now` as an RFC 3339 UTC time with milliseconds.
    fn write(&mut self, buf: &mut Vec<u8>, now: Duration) {
        let second = now.as_secs();
        if second != self.second {
            self.second = second;
            self.prefix = date_time_prefix(second);
        }
        buf.extend_from_slice(&self.prefix);
        let millis = now.subsec_millis();
        buf.extend_from_slice(&three_digits(millis));
        buf.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix second (years past 9999 keep their last four digits).
fn date_time_prefix(unix_secs: u64) -> [u8; 20] {
    let (days, secs_of_day) = (unix_secs / 86_400, unix_secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let mut out = *b"0000-00-00T00:00:00.";
    let year = year % 10_000;
    out[0..2].copy_from_slice(&two_digits(year / 100));
    out[2..4].copy_from_slice(&two_digits(year % 100));
    out[5..7].copy_from_slice(&two_digits(month));
    out[8..10].copy_from_slice(&two_digits(day));
    out[11..13].copy_from_slice(&two_digits(h));
    out[14..16].copy_from_slice(&two_digits(m));
    out[17..19].copy_from_slice(&two_digits(s));
    out
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted so that eras (400 years) and years start on March 1st: the leap day is last.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn two_digits(n: u64) -> [u8; 2] {
    [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

pub(super) fn three_digits(n: u32) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// The visitor appending ` name=value` per field.
struct Fields<'a> {
    buf: &'a mut Vec<u8>,
}

impl Fields<'_> {
    /// Appends ` name=`, or `false` for the event's message (not part of the line).
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" {
            return false;
        }
        self.buf.push(b' ');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'=');
        true
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            write_value(self.buf, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.key(field) {
            return;
        }
        write_formatted(self.buf, format_args!("{value:?}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            write_f64(self.buf, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            let text: &[u8] = if value { b"true" } else { b"false" };
            self.buf.extend_from_slice(text);
        }
    }
}

/// Appends `args` formatted in place, quoted and escaped afterwards in the rare case it needs it.
pub(super) fn write_formatted(buf: &mut Vec<u8>, args: fmt::Arguments<'_>) {
    let start = buf.len();
    let _ = fmt::Write::write_fmt(&mut Bytes(buf), args);
    match needs(&buf[start..]) {
        Needs::Nothing => {}
        Needs::Quotes => {
            buf.insert(start, b'"');
            buf.push(b'"');
        }
        Needs::Escapes => {
            let raw = buf.split_off(start);
            write_quoted(buf, &String::from_utf8_lossy(&raw));
        }
    }
}

/// `fmt::Write` into the line buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A byte a value may hold unquoted: printable ASCII other than space, `"`, `=` and `\`.
const fn is_plain(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\'
}

/// What a value needs to be written.
#[derive(Debug, PartialEq, Eq)]
enum Needs {
    /// Nothing: written as is.
    Nothing,
    /// Quotes around it (empty, or a space or `=` in it).
    Quotes,
    /// Quotes and escapes (`"`, `\`, a control or a non-ASCII character).
    Escapes,
}

/// Per byte: 0 plain, [`QUOTES`] or [`ESCAPES`] (one table load per byte on the hot path).
static CLASS: [u8; 256] = {
    let mut table = [ESCAPES; 256];
    let mut b = 0;
    while b < 256 {
        if is_plain(b as u8) {
            table[b] = 0;
        }
        b += 1;
    }
    table[b' ' as usize] = QUOTES;
    table[b'=' as usize] = QUOTES;
    table
};
const QUOTES: u8 = 1;
const ESCAPES: u8 = 2;

fn needs(value: &[u8]) -> Needs {
    let class = value.iter().fold(0, |acc, &b| acc | CLASS[usize::from(b)]);
    if class & ESCAPES != 0 {
        Needs::Escapes
    } else if class & QUOTES != 0 || value.is_empty() {
        Needs::Quotes
    } else {
        Needs::Nothing
    }
}

/// Appends `value`, quoted and escaped as it needs.
pub(super) fn write_value(buf: &mut Vec<u8>, value: &str) {
    match needs(value.as_bytes()) {
        Needs::Nothing => buf.extend_from_slice(value.as_bytes()),
        Needs::Quotes => {
            buf.push(b'"');
            buf.extend_from_slice(value.as_bytes());
            buf.push(b'"');
        }
        Needs::Escapes => write_quoted(buf, value),
    }
}

/// The Unicode line and paragraph separators, and the invisible format characters a viewer acts
/// on (zero-width ones, bidirectional overrides and isolates, the byte order mark): written raw,
/// they could reorder or hide parts of a line on an operator's screen.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{2028}'
            | '\u{2029}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
    )
}

/// Appends `"value"` with `"` and `\` escaped and every control character (C0, DEL, C1, and
/// [the invisible format ones](is_invisible_format)) written as an escape.
fn write_quoted(buf: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    for c in value.chars() {
        match c {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            '\n' => buf.extend_from_slice(b"\\n"),
            '\r' => buf.extend_from_slice(b"\\r"),
            '\t' => buf.extend_from_slice(b"\\t"),
            c if c.is_ascii_control() => {
                let b = c as u8;
                buf.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            }
            c if c.is_control() || is_invisible_format(c) => {
                // Every such character is below U+10000: four hex digits.
                let n = u32::from(c);
                buf.extend_from_slice(b"\\u");
                for shift in [12, 8, 4, 0] {
                    buf.push(HEX[((n >> shift) & 0xf) as usize]);
                }
            }
            c => {
                let mut utf8 = [0; 4];
                buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    buf.push(b'"');
}

/// Appends `d` in milliseconds with three decimals, rounded half up: what [`write_f64`] writes
/// for `d.as_secs_f64() * 1e3` (but on an exact half microsecond, where the float may fall on
/// either side), without floating point.
pub(super) fn write_millis(buf: &mut Vec<u8>, d: Duration) {
    let Ok(micros) = u64::try_from((d.as_nanos() + 500) / 1000) else {
        return write_f64(buf, d.as_secs_f64() * 1e3);
    };
    buf.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    buf.push(b'.');
    buf.extend_from_slice(&three_digits((micros % 1000) as u32));
}

/// `d` in milliseconds rounded to the microsecond, for the `latency_ms` and `duration_ms` fields:
/// the value [`write_millis`] writes, and one a text rendering shows short (`1.021`, where
/// `as_secs_f64() * 1e3` shows `1.0206790000000001`).
#[inline]
pub(super) fn millis_f64(d: Duration) -> f64 {
    let micros = d.as_secs() * 1_000_000 + u64::from(d.subsec_nanos() + 500) / 1000;
    micros as f64 / 1e3
}

/// Appends `value` with three decimals, rounded half up, through integer arithmetic.
pub(super) fn write_f64(buf: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        buf.extend_from_slice(b"NaN");
        return;
    }
    let scaled = value.abs() * 1000.0 + 0.5;
    // Past u64 (and for infinities): the rare slow path.
    if scaled >= 18_446_744_073_709_551_615.0 {
        let _ = fmt::Write::write_fmt(&mut Bytes(buf), format_args!("{value:.3}"));
        return;
    }
    let thousandths = scaled as u64;
    if value < 0.0 && thousandths != 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(itoa::Buffer::new().format(thousandths / 1000).as_bytes());
    buf.push(b'.');
    buf.extend_from_slice(&three_digits((thousandths % 1000) as u32));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer into a shared buffer, failing while `fail` is set.
    #[derive(Clone, Default)]
    struct Shared {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
        fail: Arc<AtomicBool>,
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
        fn writes(&self) -> u64 {
            self.writes.load(Ordering::Relaxed)
        }
    }

    impl Write for Shared {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(io::Error::other("disk full"));
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A clock the test moves, in milliseconds since the epoch.
    fn test_clock(log: AccessLog, start_ms: u64) -> (AccessLog, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start_ms));
        let read = now.clone();
        let mut sink = Arc::try_unwrap(log.sink).ok().unwrap();
        sink.clock = WallClock::Test(Box::new(move || {
            Duration::from_millis(read.load(Ordering::Relaxed))
        }));
        (
            AccessLog {
                sink: Arc::new(sink),
            },
            now,
        )
    }

    /// 2026-12-01T02:45:12.345Z
    const T0_MS: u64 = 1_796_093_112_345;

    fn access_event(target: &str, request_id: Option<&str>) {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            client = tracing::field::display("1.2.3.4:5"),
            method = "GET",
            target = target,
            status = 200u16,
            bytes = 12u64,
            duration_ms = 0.123,
            upstream = Some("127.0.0.1:9"),
            attempts = 1u32,
            request_id = request_id,
            error = Option::<tracing::field::DisplayValue<&str>>::None,
            "request"
        );
    }

    fn with_log(log: &AccessLog, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(log.layer());
        tracing::subscriber::with_default(subscriber, f);
    }

    /// Between two system clock reads a line's time is the last read plus the counter's time
    /// since; a second later the system clock is read again.
    #[test]
    fn the_wall_clock_runs_on_the_counter_and_resyncs_every_second() {
        let (counter, mock) = quanta::Clock::mock();
        let clock = WallClock::Counter(counter);
        let mut synced = None;
        let first = clock.now(&mut synced);
        let read = synced.expect("the first read syncs").wall;
        assert_eq!(first, read);
        mock.increment(Duration::from_millis(400));
        assert_eq!(clock.now(&mut synced), read + Duration::from_millis(400));
        mock.increment(Duration::from_millis(599));
        assert_eq!(clock.now(&mut synced), read + Duration::from_millis(999));
        assert_eq!(
            synced.unwrap().wall,
            read,
            "not read again within the second"
        );
        let before = synced.unwrap().raw;
        mock.increment(Duration::from_millis(1));
        let again = clock.now(&mut synced);
        let resynced = synced.unwrap();
        assert_ne!(resynced.raw, before, "read again after a second");
        assert_eq!(resynced.wall, again, "the line's time is the fresh read");
    }

    #[test]
    fn a_line_has_the_fields_in_order_and_leaves_out_absent_ones() {
        let out = Shared::default();
        let (log, _now) = test_clock(AccessLog::new(out.clone()), T0_MS);
        with_log(&log, || {
            access_event("/a?b", Some("abc"));
            access_event("/", None);
        });
        assert_eq!(
            out.text(),
            "ts=2026-12-01T02:45:12.345Z client=1.2.3.4:5 method=GET target=/a?b status=200 \
             bytes=12 duration_ms=0.123 upstream=127.0.0.1:9 attempts=1 request_id=abc\n\
             ts=2026-12-01T02:45:12.345Z client=1.2.3.4:5 method=GET target=/ status=200 \
             bytes=12 duration_ms=0.123 upstream=127.0.0.1:9 attempts=1\n"
        );
        assert_eq!(out.writes(), 2, "one write per line");
    }

    #[test]
    fn every_value_kind_is_written() {
        let out = Shared::default();
        let (log, _now) = test_clock(AccessLog::new(out.clone()), 0);
        with_log(&log, || {
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                s = "x",
                d = tracing::field::display("has space"),
                dbg = ?1u8,
                u = u64::MAX,
                i = -42i64,
                f = -1.5f64,
                b = true,
                e = tracing::field::display(""),
            );
        });
        assert_eq!(
            out.text(),
            "ts=1970-01-01T00:00:00.000Z s=x d=\"has space\" dbg=1 u=18446744073709551615 \
             i=-42 f=-1.500 b=true e=\"\"\n"
        );
    }

    #[test]
    fn hostile_values_are_quoted_and_escaped_on_one_line() {
        let out = Shared::default();
        let log = AccessLog::new(out.clone());
        with_log(&log, || {
            access_event(
                "/a\nts=forged status=200\r\n\"q\" k=v \\ \u{1b}[31m\u{7f}\u{9b}\u{2028}é\t\u{202e}\u{200b}",
                Some("id with=\"quote\""),
            );
        });
        let text = out.text();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(!text.contains('\r') && !text.contains('\u{1b}') && !text.contains('\u{9b}'));
        assert!(
            text.contains(
                " target=\"/a\\nts=forged status=200\\r\\n\\\"q\\\" k=v \\\\ \\x1b[31m\\x7f\
                 \\u009b\\u2028é\\t\\u202e\\u200b\" "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(" request_id=\"id with=\\\"quote\\\"\"\n"),
            "{text}"
        );
    }

    #[test]
    fn a_display_value_needing_quotes_is_escaped_too() {
        struct Hostile;
        impl fmt::Display for Hostile {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("/p\nq=\"")
            }
        }
        let out = Shared::default();
        let (log, _now) = test_clock(AccessLog::new(out.clone()), 0);
        with_log(&log, || {
            tracing::info!(target: ACCESS_LOG_TARGET, target = tracing::field::display(Hostile));
        });
        assert_eq!(
            out.text(),
            "ts=1970-01-01T00:00:00.000Z target=\"/p\\nq=\\\"\"\n"
        );
    }

    #[test]
    fn floats_round_to_three_decimals() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.000"),
            (0.0004, "0.000"),
            (0.0005, "0.001"),
            (0.123, "0.123"),
            (1.9996, "2.000"),
            (12.3456, "12.346"),
            (123456.789, "123456.789"),
            (-0.0001, "0.000"),
            (-2.5, "-2.500"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (1e30, "1000000000000000019884624838656.000"),
        ];
        for &(value, want) in cases {
            let mut buf = Vec::new();
            write_f64(&mut buf, value);
            assert_eq!(String::from_utf8(buf).unwrap(), want, "{value}");
        }
    }

    #[test]
    fn dates_match_known_days_including_leap_days() {
        let cases: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (951_868_799, "2000-02-29T23:59:59."),
            (951_868_800, "2000-03-01T00:00:00."),
            (1_709_164_800, "2024-02-29T00:00:00."),
            (1_709_251_199, "2024-02-29T23:59:59."),
            (1_709_251_200, "2024-03-01T00:00:00."),
            (4_107_542_400, "2100-03-01T00:00:00."), // 2100 is not a leap year
            (4_107_456_000, "2100-02-28T00:00:00."),
            (1_798_761_599, "2026-12-31T23:59:59."),
            (1_798_761_600, "2027-01-01T00:00:00."),
            (253_402_300_799, "9999-12-31T23:59:59."),
        ];
        for &(secs, want) in cases {
            assert_eq!(
                std::str::from_utf8(&date_time_prefix(secs)).unwrap(),
                want,
                "{secs}"
            );
        }
        // Every day of four centuries against a day-by-day count.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for days in 0..146_097u64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[(m - 1) as usize] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn the_timestamp_is_formatted_again_only_when_the_second_changes() {
        let mut cache = TimestampCache::default();
        let mut buf = Vec::new();
        cache.write(&mut buf, Duration::from_millis(T0_MS));
        assert_eq!(buf, b"2026-12-01T02:45:12.345Z");
        // A stale prefix shows whether the cached one is reused within the second.
        cache.prefix = *b"cached-prefix-0000T.";
        buf.clear();
        cache.write(&mut buf, Duration::from_millis(T0_MS + 654));
        assert_eq!(buf, b"cached-prefix-0000T.999Z");
        buf.clear();
        cache.write(&mut buf, Duration::from_millis(T0_MS + 655));
        assert_eq!(buf, b"2026-12-01T02:45:13.000Z");
    }

    /// The length of the line `access_event(target, None)` writes.
    fn line_len(target: &str) -> usize {
        let out = Shared::default();
        let log = AccessLog::new(out.clone());
        with_log(&log, || access_event(target, None));
        out.text().len()
    }

    #[test]
    fn buffered_lines_are_written_when_the_batch_is_full() {
        let len = line_len("/1");
        let out = Shared::default();
        let (log, _now) = test_clock(
            AccessLog::new(out.clone()).buffered(2 * len, Duration::from_secs(3600)),
            T0_MS,
        );
        with_log(&log, || {
            access_event("/1", None);
            assert_eq!(out.writes(), 0, "held");
            access_event("/2", None);
            assert_eq!(out.writes(), 1, "the batch size reached: one write of both");
            assert_eq!(out.text().lines().count(), 2);
            access_event("/3", None);
            access_event("/4-longer", None);
            assert_eq!(
                out.writes(),
                2,
                "the third goes alone, before the fourth would overflow the batch"
            );
            assert_eq!(out.text().lines().count(), 3);
        });
        log.flush().unwrap();
        assert_eq!(out.text().lines().count(), 4);
        assert!(out
            .text()
            .lines()
            .last()
            .unwrap()
            .contains(" target=/4-longer "));
    }

    #[test]
    fn buffered_lines_are_written_once_the_oldest_is_old_enough() {
        let out = Shared::default();
        let (log, now) = test_clock(
            AccessLog::new(out.clone()).buffered(1 << 20, Duration::from_secs(1)),
            T0_MS,
        );
        with_log(&log, || {
            access_event("/1", None);
            now.fetch_add(999, Ordering::Relaxed);
            access_event("/2", None);
            assert_eq!(out.writes(), 0, "the oldest is 999 ms old");
            now.fetch_add(1, Ordering::Relaxed);
            access_event("/3", None);
            assert_eq!(out.writes(), 1, "the oldest is 1 s old: all three go");
            assert_eq!(out.text().lines().count(), 3);
            now.fetch_add(10_000, Ordering::Relaxed);
            access_event("/4", None);
            assert_eq!(
                out.writes(),
                1,
                "the age counts from the oldest line held, not the last write"
            );
            now.fetch_sub(60_000, Ordering::Relaxed);
            access_event("/5", None);
            assert_eq!(
                out.writes(),
                1,
                "the age counts from the earliest line held"
            );
            now.fetch_add(1_000, Ordering::Relaxed);
            access_event("/6", None);
            assert_eq!(
                out.writes(),
                2,
                "a clock stepped back holds lines no longer"
            );
        });
    }

    /// A quiet server's last lines reach the writer: the log's thread writes them once old.
    #[test]
    fn held_lines_are_written_without_another_line_coming() {
        let out = Shared::default();
        let log = AccessLog::new(out.clone()).buffered(1 << 20, Duration::from_millis(20));
        with_log(&log, || access_event("/only", None));
        // A bounded wait (up to 30 s) for the thread, not a measure of it.
        for _ in 0..6_000 {
            if out.writes() > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.text().lines().count(), 1, "the held line was written");
        assert_eq!(log.write_errors(), 0);
    }

    #[test]
    fn held_lines_are_written_when_the_last_handle_is_dropped() {
        let out = Shared::default();
        let log = AccessLog::new(out.clone()).buffered(1 << 20, Duration::from_secs(3600));
        with_log(&log, || access_event("/1", None));
        assert_eq!(out.writes(), 0);
        drop(log);
        assert_eq!(out.text().lines().count(), 1);
    }

    #[test]
    fn a_failing_writer_is_counted_and_the_next_lines_still_go() {
        let out = Shared::default();
        let log = AccessLog::new(out.clone());
        with_log(&log, || {
            out.fail.store(true, Ordering::Relaxed);
            access_event("/lost-1", None);
            access_event("/lost-2", None);
            out.fail.store(false, Ordering::Relaxed);
            access_event("/kept", None);
        });
        assert_eq!(log.write_errors(), 2);
        assert_eq!(out.text().lines().count(), 1);
        assert!(out.text().contains("target=/kept "));
    }

    #[test]
    fn a_failure_is_reported_at_most_once_a_minute() {
        let log = AccessLog::new(io::sink());
        let sink = &log.sink;
        let e = io::Error::other("x");
        let at = Duration::from_millis;
        sink.failed(&e, at(T0_MS));
        let first = sink.last_report.load(Ordering::Relaxed);
        assert_eq!(first, T0_MS / 1000);
        sink.failed(&e, at(T0_MS + 59_000));
        assert_eq!(
            sink.last_report.load(Ordering::Relaxed),
            first,
            "not again within the minute"
        );
        sink.failed(&e, at(T0_MS + 60_000));
        assert_eq!(sink.last_report.load(Ordering::Relaxed), first + 60);
        assert_eq!(log.write_errors(), 3);
    }

    #[test]
    fn alone_it_enables_only_access_events() {
        let log = AccessLog::new(io::sink());
        with_log(&log, || {
            tracing::callsite::rebuild_interest_cache();
            assert!(tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO));
            assert!(!tracing::enabled!(target: "app", tracing::Level::ERROR));
            let span = tracing::info_span!(target: super::super::SPAN_TARGET, "request");
            assert!(span.is_disabled(), "the request span costs nothing");
            let span = tracing::info_span!(target: ACCESS_LOG_TARGET, "request");
            assert!(span.is_disabled(), "not even a span of the access target");
        });
    }

    #[test]
    fn beside_fmt_each_sees_its_own() {
        let ours = Shared::default();
        let theirs = Shared::default();
        let log = AccessLog::new(ours.clone());
        let fmt_writer = theirs.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || fmt_writer.clone());
        let subscriber = tracing_subscriber::registry().with(log.layer()).with(fmt);
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            let span = tracing::info_span!("work");
            assert!(!span.is_disabled(), "fmt still sees spans");
            let _enter = span.enter();
            tracing::warn!(target: "app", "app says hi");
            access_event("/x", None);
        });
        let ours = ours.text();
        assert_eq!(ours.lines().count(), 1, "{ours}");
        assert!(ours.contains(" target=/x ") && !ours.contains("app says hi"));
        let theirs = theirs.text();
        assert!(theirs.contains("app says hi"), "{theirs}");
    }

    #[tokio::test]
    async fn the_tower_host_logs_its_requests_target_too() {
        use tower::{ServiceBuilder, ServiceExt};
        let out = Shared::default();
        let log = AccessLog::new(out.clone());
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(log.layer()));
        tracing::callsite::rebuild_interest_cache();
        let svc = ServiceBuilder::new()
            .layer(super::super::ObsLayer::new())
            .service_fn(|_req: http::Request<String>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            });
        let req = http::Request::get("/tower?q=1")
            .header("x-request-id", "rid-1")
            .body(String::new())
            .unwrap();
        svc.oneshot(req).await.unwrap();
        let text = out.text();
        assert!(
            text.contains(" method=GET target=\"/tower?q=1\" status=200 duration_ms="),
            "{text}"
        );
        assert!(text.ends_with(" request_id=rid-1\n"), "{text}");
    }

    #[test]
    fn log_addr_displays_as_the_standard_address() {
        for addr in [
            "0.0.0.0:0",
            "1.2.3.4:5",
            "10.20.30.40:8080",
            "127.0.0.1:40722",
            "255.255.255.255:65535",
            "100.9.99.199:10",
            "[::1]:443",
            "[2001:db8::1:0:0:1]:65535",
            "[::ffff:1.2.3.4]:80",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(LogAddr(addr).to_string(), addr.to_string());
            assert_eq!(format!("{:>24}", LogAddr(addr)), format!("{addr:>24}"));
            let mut line = Vec::new();
            LogAddr(addr).append(&mut line);
            assert_eq!(line, addr.to_string().into_bytes());
        }
    }

    #[test]
    fn every_octet_is_written_as_the_standard_address_writes_it() {
        for n in 0..=255u8 {
            let addr = std::net::SocketAddr::from(([n, 255 - n, n / 3, 7], u16::from(n) * 257));
            let mut line = Vec::new();
            LogAddr(addr).append(&mut line);
            assert_eq!(line, addr.to_string().into_bytes());
        }
    }

    /// 20,000 pseudo-random durations (xorshift), of every scale from nanoseconds to
    /// `10^digits` ns.
    fn sample_durations(digits: u64) -> impl Iterator<Item = Duration> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..20_000u64).map(move |i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_nanos(x % 10u64.pow((i % digits) as u32 + 1))
        })
    }

    /// The integer milliseconds equal the float ones but on an exact half microsecond.
    #[test]
    fn millis_are_written_as_the_float_milliseconds() {
        // Up to hours.
        for d in sample_durations(13).filter(|d| d.subsec_nanos() % 1000 != 500) {
            let (mut ints, mut floats) = (Vec::new(), Vec::new());
            write_millis(&mut ints, d);
            write_f64(&mut floats, d.as_secs_f64() * 1e3);
            assert_eq!(ints, floats, "{d:?}");
        }
        let mut buf = Vec::new();
        write_millis(&mut buf, Duration::from_micros(1_234_500));
        assert_eq!(buf, b"1234.500");
    }

    /// The fields' float milliseconds: written as the line writes them, shown short.
    #[test]
    fn float_millis_match_the_line_and_show_at_most_three_decimals() {
        // Up to days, exact half microseconds included.
        for d in sample_durations(15) {
            let (mut ints, mut floats) = (Vec::new(), Vec::new());
            write_millis(&mut ints, d);
            write_f64(&mut floats, millis_f64(d));
            assert_eq!(ints, floats, "{d:?}");
            let shown = millis_f64(d).to_string();
            let decimals = shown.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(decimals <= 3, "{d:?} shown as {shown}");
        }
        assert_eq!(
            millis_f64(Duration::from_nanos(1_020_679)).to_string(),
            "1.021"
        );
    }

    #[test]
    fn a_missing_directory_is_named_in_the_error() {
        let e = AccessLog::file("/nonexistent-dir/access.log").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/access.log"), "{e}");
    }
}
