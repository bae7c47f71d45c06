//! `loadgen`: the proxy bench's HTTP/1.1 load generator (hyper client, keep-alive connections,
//! current-thread tokio runtime, so pin it with `taskset`).
//!
//! ```text
//! loadgen --url http://127.0.0.1:19001/ [--connections 1]
//!         (--rate R --duration S | --count N) [--cacert ca.pem] [--fresh full|resumed]
//! ```
//! - **TLS** (`--url https://…`): each connection does one TLS handshake (rustls, TLS 1.3,
//!   ALPN `http/1.1`, the server's certificate verified against `--cacert`) and then carries
//!   its keep-alive requests, so the handshake is amortised as with `wrk`.
//! - **Connection churn** (`--fresh`): every request on a new connection, closed by the client
//!   once the answer is read; its service time then includes the TCP connect and the TLS
//!   handshake. `full`: every TLS handshake is a full one (no session resumption); `resumed`:
//!   the client keeps the server's session tickets and resumes.
//! - **Open loop** (`--rate`, `--duration`): request `i` is due at `start + i / R`; requests are
//!   spread round robin over the connections, each connection sending its due requests one
//!   after another (HTTP/1.1 has one request in flight per connection), so a slow server builds
//!   a queue instead of lowering the offered rate. Requests not sent by `duration + 2 s` count
//!   as `unsent`.
//! - **Closed loop** (`--count N`): `N` requests split over the connections, each sent as soon
//!   as the previous answer on its connection is read (the instruction-count runs).
//!
//! A request counts as `ok` when the answer is `200` with its whole body read; anything else
//! (other status, I/O error, 2 s without an answer) is an `error`, and the connection is opened
//! again. Prints one line of `key=value` pairs:
//! `ok`, `errors`, `unsent`, `elapsed_s`, `achieved_rps`, the service time (request written
//! until the answer's last byte) `p50_us`, `p90_us`, `p99_us`, `max_us`, and the latency counted
//! from when each request was due (`due_p50_us`, `due_p99_us`: includes queueing and the
//! runtime's 1 ms timer granularity), and the TLS handshakes done and resumed
//! (`tls_handshakes`, `tls_resumed`).

// A load generator schedules and times real requests: wall-clock `std::time::Instant` is the point.
#![allow(clippy::disallowed_types)]

#[path = "../common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const USAGE: &str = "loadgen --url http://127.0.0.1:19001/ [--connections 1] \
                     (--rate R --duration S | --count N) [--cacert ca.pem] \
                     [--fresh full|resumed]";

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past `--duration` an open-loop run may go on draining its queue.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    authority: String,
    path: String,
    /// For `https://` URLs: the client configuration.
    tls: Option<TlsConnector>,
    /// `--fresh`: a new connection per request.
    fresh: bool,
}

/// A TLS client trusting only the certificates in `cacert`, offering HTTP/1.1, resuming
/// sessions when `resume`.
fn tls_connector(cacert: &str, resume: bool) -> Result<TlsConnector, common::BoxError> {
    let pem = std::fs::read(cacert).map_err(|e| format!("--cacert {cacert}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(std::sync::Arc::new(config)))
}

/// What one connection's task measured.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    unsent: u64,
    /// TLS handshakes done, and how many of them resumed a session.
    handshakes: u64,
    resumed: u64,
    /// Nanoseconds from writing the request (with `--fresh`, from connecting) to reading the
    /// answer's last byte.
    service_ns: Vec<u64>,
    /// Nanoseconds from when the request was due to its answer's last byte.
    due_ns: Vec<u64>,
    last_done: Option<Instant>,
}

/// When a connection's requests are due.
#[derive(Clone, Copy)]
enum Plan {
    /// Request `index` (every `stride`-th from `first`) is due at `start + index * interval`,
    /// up to `total` requests in all; none is sent after `stop`.
    Paced {
        start: Instant,
        interval: Duration,
        first: u64,
        stride: u64,
        total: u64,
        stop: Instant,
    },
    /// `n` requests back to back.
    Closed { n: u64 },
}

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let url: http::Uri = args
        .opt("url")
        .ok_or("--url is required")?
        .parse()
        .map_err(|e| format!("--url: {e}"))?;
    let authority = url.authority().ok_or("--url needs host:port")?.to_string();
    let addr: SocketAddr = authority
        .parse()
        .map_err(|e| format!("--url: need an IP:port authority ({e})"))?;
    let (fresh, resume) = match args.opt("fresh").as_deref() {
        None => (false, true),
        Some("full") => (true, false),
        Some("resumed") => (true, true),
        Some(other) => return Err(format!("--fresh: full or resumed, not {other:?}").into()),
    };
    let tls = match url.scheme_str() {
        Some("https") => Some(tls_connector(
            &args
                .opt("cacert")
                .ok_or("an https:// --url needs --cacert")?,
            resume,
        )?),
        _ => None,
    };
    let target = Target {
        addr,
        authority,
        path: url.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        tls,
        fresh,
    };
    let connections: u64 = args.parse_or("connections", 1u64).max(1);
    let count: Option<u64> = args.opt("count").map(|_| args.parse_or("count", 0));
    let rate: f64 = args.parse_or("rate", 0.0);
    let duration: f64 = args.parse_or("duration", 0.0);
    if count.is_none() && (rate <= 0.0 || duration <= 0.0 || duration > 60.0) {
        return Err("need --count N, or --rate R and --duration S (0 < S <= 60)".into());
    }

    let rt = common::runtime(0)?;
    let (tallies, elapsed) = rt.block_on(async move {
        let start = Instant::now() + Duration::from_millis(20);
        let plans: Vec<Plan> = (0..connections)
            .map(|k| match count {
                Some(n) => Plan::Closed {
                    n: n / connections + u64::from(k < n % connections),
                },
                None => Plan::Paced {
                    start,
                    interval: Duration::from_secs_f64(1.0 / rate),
                    first: k,
                    stride: connections,
                    total: (rate * duration).round() as u64,
                    stop: start + Duration::from_secs_f64(duration) + DRAIN,
                },
            })
            .collect();
        let tasks: Vec<_> = plans
            .into_iter()
            .map(|plan| tokio::spawn(run_connection(target.clone(), plan)))
            .collect();
        let mut tallies = Vec::with_capacity(tasks.len());
        for task in tasks {
            tallies.push(task.await?);
        }
        let end = tallies
            .iter()
            .filter_map(|t: &Tally| t.last_done)
            .max()
            .unwrap_or(start);
        // Open loop: the rate is over the planned duration unless the run overran it.
        let measured = end.saturating_duration_since(start).as_secs_f64();
        let elapsed = if count.is_some() {
            measured
        } else {
            measured.max(duration)
        };
        Ok::<_, common::BoxError>((tallies, elapsed))
    })?;

    let mut service: Vec<u64> = Vec::new();
    let mut due: Vec<u64> = Vec::new();
    let (mut ok, mut errors, mut unsent, mut handshakes, mut resumed) = (0, 0, 0, 0, 0);
    for t in tallies {
        ok += t.ok;
        errors += t.errors;
        unsent += t.unsent;
        handshakes += t.handshakes;
        resumed += t.resumed;
        service.extend(t.service_ns);
        due.extend(t.due_ns);
    }
    service.sort_unstable();
    due.sort_unstable();
    let us = |v: &[u64], p: f64| percentile(v, p) as f64 / 1_000.0;
    println!(
        "ok={ok} errors={errors} unsent={unsent} elapsed_s={elapsed:.3} achieved_rps={:.1} \
         p50_us={:.1} p90_us={:.1} p99_us={:.1} max_us={:.1} due_p50_us={:.1} due_p99_us={:.1} \
         tls_handshakes={handshakes} tls_resumed={resumed}",
        if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        us(&service, 0.50),
        us(&service, 0.90),
        us(&service, 0.99),
        us(&service, 1.0),
        us(&due, 0.50),
        us(&due, 0.99),
    );
    Ok(())
}

/// Nearest-rank percentile of sorted `v` (0 when empty).
fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (p * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// A connection to the target, and for TLS whether its handshake resumed a session.
async fn connect(
    target: &Target,
) -> Result<(SendRequest<Empty<Bytes>>, Option<bool>), common::BoxError> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let Some(tls) = &target.tls else {
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok((sender, None));
    };
    let name = ServerName::from(target.addr.ip());
    let stream = tls.connect(name, stream).await?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, Some(resumed)))
}

/// One request on `sender`: `Ok(true)` for `200` with its body read.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
) -> Result<bool, common::BoxError> {
    sender.ready().await?;
    let req = Request::get(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .body(Empty::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    res.into_body().collect().await?;
    Ok(status == http::StatusCode::OK)
}

async fn run_connection(target: Target, plan: Plan) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut index = match plan {
        Plan::Paced { first, .. } => first,
        Plan::Closed { .. } => 0,
    };
    loop {
        let due = match plan {
            Plan::Paced {
                start,
                interval,
                stride,
                total,
                stop,
                ..
            } => {
                if index >= total {
                    break;
                }
                let due = start + interval.mul_f64(index as f64);
                if Instant::now() >= stop {
                    tally.unsent += (total - index).div_ceil(stride);
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                index += stride;
                Some(due)
            }
            Plan::Closed { n } => {
                if index >= n {
                    break;
                }
                index += 1;
                None
            }
        };
        let started = Instant::now();
        if sender.is_none() {
            match tokio::time::timeout(REQUEST_TIMEOUT, connect(&target)).await {
                Ok(Ok((s, tls))) => {
                    sender = Some(s);
                    if let Some(resumed) = tls {
                        tally.handshakes += 1;
                        tally.resumed += u64::from(resumed);
                    }
                }
                failed => {
                    // The first failure of each connection says why (a TLS error, a refusal).
                    if tally.errors == 0 {
                        match failed {
                            Ok(Err(e)) => eprintln!("loadgen: connect failed: {e}"),
                            _ => eprintln!("loadgen: connect timed out"),
                        }
                    }
                    tally.errors += 1;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        // With `--fresh` the connect and the handshake are part of the request's time.
        let sent = if target.fresh {
            started
        } else {
            Instant::now()
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange(s, &target)).await;
        let done = Instant::now();
        match result {
            Ok(Ok(true)) => {
                tally.ok += 1;
                tally.service_ns.push((done - sent).as_nanos() as u64);
                if let Some(due) = due {
                    tally.due_ns.push((done - due).as_nanos() as u64);
                }
                tally.last_done = Some(done);
            }
            Ok(Ok(false)) => {
                tally.errors += 1;
                tally.last_done = Some(done);
            }
            _ => {
                tally.errors += 1;
                sender = None;
            }
        }
        if target.fresh {
            // Dropping the sender ends the connection's task, which closes the socket.
            sender = None;
        }
    }
    tally
}
