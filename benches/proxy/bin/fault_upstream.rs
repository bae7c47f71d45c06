//! `fault-upstream`: an HTTP/1.1 upstream that misbehaves on purpose, for the soak run
//! (`benches/soak/run.sh`). A raw tokio TCP server: each request gets, by a fixed fraction,
//! a reset mid-body, a truncated body, a stall before the head, a `503`, bytes that are not
//! HTTP, or a close before the head; every other request gets `200` with the 1 KiB body and the
//! connection stays open.
//!
//! ```text
//! fault-upstream [--listen 127.0.0.1:19000] [--workers 1] [--stall-ms 2000]
//!                [--reset 0.02] [--truncate 0.02] [--stall 0.02] [--status503 0.03]
//!                [--garbage 0.01] [--close 0.02]
//! ```
//! Fractions are of all requests (their sum at most 1). The choice is a deterministic
//! pseudo-random sequence, so two runs inject the same faults in the same order. Prints
//! `listening on ADDR` once bound; on SIGINT or SIGTERM prints one `key=value` line with the
//! count of each answer and exits.

#[path = "../common.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "fault-upstream [--listen 127.0.0.1:19000] [--workers 1] [--stall-ms 2000] \
                     [--reset F] [--truncate F] [--stall F] [--status503 F] [--garbage F] \
                     [--close F]";

/// What one request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    Reset,
    Truncate,
    Stall,
    Status503,
    Garbage,
    Close,
}

const ANSWERS: [Answer; 7] = [
    Answer::Ok,
    Answer::Reset,
    Answer::Truncate,
    Answer::Stall,
    Answer::Status503,
    Answer::Garbage,
    Answer::Close,
];

impl Answer {
    fn name(self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::Reset => "reset",
            Answer::Truncate => "truncate",
            Answer::Stall => "stall",
            Answer::Status503 => "status503",
            Answer::Garbage => "garbage",
            Answer::Close => "close",
        }
    }
}

/// The fault mix: cumulative thresholds in millionths, one per fault, in `ANSWERS[1..]` order.
struct Mix {
    thresholds: [(u64, Answer); 6],
    stall: Duration,
    next: AtomicU64,
    counts: [AtomicU64; 7],
}

impl Mix {
    fn pick(&self) -> Answer {
        // SplitMix64 over a counter: cheap, lock-free, reproducible.
        let mut z = self
            .next
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let roll = z % 1_000_000;
        let answer = self
            .thresholds
            .iter()
            .find(|(limit, _)| roll < *limit)
            .map_or(Answer::Ok, |(_, a)| *a);
        let slot = ANSWERS.iter().position(|a| *a == answer).unwrap_or(0);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        answer
    }

    fn summary(&self) -> String {
        ANSWERS
            .iter()
            .zip(&self.counts)
            .map(|(a, c)| format!("{}={}", a.name(), c.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn main() -> Result<(), common::BoxError> {
    let args = common::Args::parse(USAGE);
    let listen = args.get("listen", "127.0.0.1:19000");
    let workers = args.parse_or("workers", 1);
    let mut cumulative = 0.0_f64;
    let mut thresholds = [(0_u64, Answer::Ok); 6];
    let defaults = [0.02, 0.02, 0.02, 0.03, 0.01, 0.02];
    for (i, answer) in ANSWERS[1..].iter().enumerate() {
        let fraction: f64 = args.parse_or(answer.name(), defaults[i]);
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!("--{} {fraction}: expected 0..=1", answer.name()).into());
        }
        cumulative += fraction;
        // Rounded to millionths; the cast is of a value in 0..=1e6.
        thresholds[i] = ((cumulative * 1_000_000.0).round() as u64, *answer);
    }
    if cumulative > 1.0 + 1e-9 {
        return Err(format!("the fault fractions add up to {cumulative}, above 1").into());
    }
    let mix = Arc::new(Mix {
        thresholds,
        stall: Duration::from_millis(args.parse_or("stall-ms", 2_000)),
        next: AtomicU64::new(0),
        counts: Default::default(),
    });
    common::runtime(workers)?.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("listening on {}", listener.local_addr()?);
        tokio::select! {
            r = common::stop_signal() => r?,
            () = serve(listener, mix.clone()) => {}
        }
        println!("{}", mix.summary());
        Ok(())
    })
}

async fn serve(listener: TcpListener, mix: Arc<Mix>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, mix.clone()));
    }
}

/// Serves requests on one connection until a fault ends it or the peer goes.
async fn connection(mut stream: TcpStream, mix: Arc<Mix>) {
    let mut buf = Vec::with_capacity(4096);
    while read_request(&mut stream, &mut buf).await {
        let answer = mix.pick();
        let keep = match answer {
            Answer::Ok => write_ok(&mut stream).await,
            Answer::Status503 => stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .await
                .is_ok(),
            Answer::Reset | Answer::Truncate => {
                // Linger 0 makes the close a reset; it does not block (nothing to flush).
                #[allow(deprecated)]
                let reset = matches!(answer, Answer::Reset)
                    && stream.set_linger(Some(Duration::ZERO)).is_ok();
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\nxxxx")
                    .await;
                if !reset {
                    let _ = stream.shutdown().await;
                }
                false
            }
            Answer::Stall => {
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(mix.stall, async {
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                false
            }
            Answer::Garbage => {
                let _ = stream.write_all(b"\x00\x01not http at all\r\n\r\n").await;
                false
            }
            Answer::Close => false,
        };
        if !keep {
            return;
        }
    }
}

async fn write_ok(stream: &mut TcpStream) -> bool {
    let mut out = Vec::with_capacity(64 + common::BODY.len());
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n");
    out.extend_from_slice(&common::BODY);
    stream.write_all(&out).await.is_ok()
}

/// Reads one request head and its `Content-Length` body; `false` when the connection ends.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 || !read_more(stream, buf).await {
            return false;
        }
    };
    let length = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        if !read_more(stream, buf).await {
            return false;
        }
    }
    buf.drain(..head_end + length);
    true
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}
