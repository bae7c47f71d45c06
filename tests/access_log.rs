//! `AccessLog` behind a real `PingoraProxy`: one line per request in a real file, the fields
//! the proxy knows, and nothing a client sends able to forge a line or reach a terminal raw.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::routing::any;
use axum::Router;
use http::{Request, StatusCode};
use pingora_tower::middleware::obs::{AccessLog, Metrics, ObsLayer};
use pingora_tower::proxy::{PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower::{server, RunningServer, ServeTower};
use pingora_tower_test_support::*;
use tracing_subscriber::layer::SubscriberExt;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("access-log-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An upstream answering `hello` (5 bytes) to everything.
async fn upstream() -> RunningServer {
    let app = Router::new()
        .route("/", any(|| async { "hello" }))
        .route("/{*path}", any(|| async { "hello" }));
    server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .expect("upstream")
}

/// `/` to `up`, `/dead` to an address nobody listens on.
async fn proxy(up: SocketAddr, dead: SocketAddr) -> RunningProxy {
    PingoraProxy::builder("127.0.0.1:0")
        .routes([
            Route::prefix("/", Upstream::new(format!("http://{up}"))),
            Route::prefix("/dead", Upstream::new(format!("http://{dead}"))),
        ])
        .metrics(Metrics::new())
        .spawn()
        .await
        .expect("proxy")
}

/// The file's lines once one of them holds `last` (the proxy logs after the response is sent).
async fn lines_until(path: &Path, last: &str) -> Vec<Vec<u8>> {
    let read = async {
        loop {
            let bytes = std::fs::read(path).unwrap_or_default();
            let lines: Vec<Vec<u8>> = bytes
                .split_inclusive(|&b| b == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            if lines
                .iter()
                .any(|l| l.windows(last.len()).any(|w| w == last.as_bytes()))
            {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, read)
        .await
        .unwrap_or_else(|_| panic!("no line with {last:?} in {path:?}"))
}

/// The ` key=` value of a line (quoted values with their quotes).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if rest.starts_with('"') {
        let mut escaped = false;
        for (i, c) in rest.char_indices().skip(1) {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => return Some(&rest[..=i]),
                _ => escaped = false,
            }
        }
        None
    } else {
        rest.split([' ', '\n']).next()
    }
}

// The current-thread test runtime runs the proxy on this thread, so a thread's default
// subscriber sees its events.
#[tokio::test]
async fn a_proxy_writes_one_escaped_line_per_request() {
    let dir = TempDir::new();
    let path = dir.0.join("access.log");
    let log = AccessLog::file(&path).unwrap();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(log.layer()));
    tracing::callsite::rebuild_interest_cache();

    let up = upstream().await;
    let dead = refusing_addr();
    let proxy = proxy(up.local_addr(), dead).await;
    let addr = proxy.local_addr();

    // 1. A plain request with a request id the proxy keeps.
    let req = Request::get("/a/b?c=d")
        .header(http::header::HOST, addr.to_string())
        .header("x-request-id", "abc-1")
        .body(empty())
        .unwrap();
    let res = send(addr, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_text(res).await, "hello");

    // 2. Percent-encoded line breaks and quotes in the target, a request id with a quote, an
    //    `=` and a backslash (printable ASCII: the proxy keeps it).
    let raw = format!(
        "GET /x%0aforged=1%0d%0a%22q HTTP/1.1\r\nHost: {addr}\r\nX-Request-Id: i\"d=\\\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = raw_exchange(addr, raw.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");

    // 3. Raw control and non-ASCII bytes in the target: a clean refusal or a clean answer.
    let mut raw = b"GET /raw\x1b[31m\x7f\xc2\x9b\xff\"x HTTP/1.1\r\nHost: h\r\n".to_vec();
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    let answer = raw_exchange(addr, &raw).await;
    let raw_status = raw_status(&answer);
    assert!(
        matches!(raw_status, None | Some(400..=499) | Some(200)),
        "{answer}"
    );

    // 4. A failure: the upstream refuses, the line says why.
    let (status, _) = tokio::time::timeout(HANG_GUARD, http_get(addr, "/dead"))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // The server still serves.
    let (status, body) = tokio::time::timeout(HANG_GUARD, http_get(addr, "/after"))
        .await
        .expect("answered");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));

    // Requests 1, 2, 4 and 5 are logged, once each; 3 when the proxy got as far as a request.
    let logged = lines_until(&path, " target=/after ").await;
    let raw_logged = logged.iter().any(|l| l.windows(4).any(|w| w == b"/raw"));
    assert_eq!(logged.len(), 4 + usize::from(raw_logged), "{logged:?}");
    for line in &logged {
        assert!(line.ends_with(b"\n"), "{line:?}");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(
            line.iter()
                .all(|&b| b == b'\n' || (0x20..0x7f).contains(&b) || b >= 0x80),
            "a raw control byte: {line:?}"
        );
        assert!(line.starts_with(b"ts="), "{line:?}");
    }
    let logged: Vec<String> = logged
        .into_iter()
        .map(|l| String::from_utf8(l).expect("UTF-8 lines"))
        .collect();
    let by_target = |t: &str| {
        logged
            .iter()
            .find(|l| field(l, "target") == Some(t))
            .unwrap_or_else(|| panic!("no line for {t}: {logged:#?}"))
    };

    let first = by_target("\"/a/b?c=d\"");
    assert_eq!(first.len(), first.trim_end().len() + 1);
    let ts = &first[3..27];
    assert_eq!(ts.len(), 24, "{first}");
    assert!(ts.ends_with('Z') && &ts[10..11] == "T", "{first}");
    assert_eq!(field(first, "method"), Some("GET"));
    assert_eq!(field(first, "status"), Some("200"));
    assert_eq!(field(first, "bytes"), Some("5"));
    assert_eq!(
        field(first, "upstream").map(String::from),
        Some(up.local_addr().to_string())
    );
    assert_eq!(field(first, "attempts"), Some("1"));
    assert_eq!(field(first, "request_id"), Some("abc-1"));
    assert!(field(first, "client")
        .unwrap()
        .parse::<SocketAddr>()
        .is_ok_and(|c| c.ip().is_loopback()));
    let ms = field(first, "duration_ms").unwrap();
    assert!(
        ms.split_once('.').is_some_and(|(_, frac)| frac.len() == 3),
        "{ms}"
    );
    assert!(field(first, "error").is_none(), "{first}");
    // Fields in the event's order.
    let order = [
        "ts=",
        " client=",
        " method=",
        " target=",
        " status=",
        " bytes=",
        " duration_ms=",
        " upstream=",
        " attempts=",
        " request_id=",
    ];
    let positions: Vec<usize> = order.iter().map(|k| first.find(k).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{first}");

    let hostile = by_target("\"/x%0aforged=1%0d%0a%22q\"");
    assert_eq!(field(hostile, "request_id"), Some("\"i\\\"d=\\\\\""));
    assert!(!logged.iter().any(|l| l.starts_with("forged")));

    // Pingora refuses such a request line before there is a request to log (400, no line);
    // were it ever let through, the line would carry escapes, not the bytes.
    match logged.iter().find(|l| l.contains("/raw")) {
        Some(line) => assert!(
            !line.contains('\u{1b}') && !line.contains('\u{7f}') && !line.contains('\u{9b}'),
            "{line:?}"
        ),
        None => assert_eq!(raw_status, Some(400), "refused, so not logged"),
    }

    let failed = by_target("/dead");
    assert_eq!(field(failed, "status"), Some("502"));
    assert!(field(failed, "error").is_some(), "{failed}");

    by_target("/after");
    assert_eq!(log.write_errors(), 0);
    proxy.shutdown().await;
}

/// `ObsLayer::access_log`: the layer writes the lines itself, with no subscriber at all.
#[tokio::test]
async fn the_obs_layer_writes_the_lines_itself_without_a_subscriber() {
    let dir = TempDir::new();
    let path = dir.0.join("direct.log");
    let log = AccessLog::file(&path).unwrap();
    let up = upstream().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix(
            "/",
            Upstream::new(format!("http://{}", up.local_addr())),
        )])
        .observability(ObsLayer::new().access_log(log.clone()))
        .metrics(Metrics::new())
        .spawn()
        .await
        .expect("proxy");
    let addr = proxy.local_addr();
    let raw = format!(
        "GET /x%0aforged=1%22q HTTP/1.1\r\nHost: {addr}\r\nX-Request-Id: direct-1\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = raw_exchange(addr, raw.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");

    let lines = lines_until(&path, "direct-1").await;
    assert_eq!(lines.len(), 1);
    let line = std::str::from_utf8(&lines[0]).unwrap();
    assert!(line.starts_with("ts="), "{line}");
    assert_eq!(field(line, "method"), Some("GET"));
    assert_eq!(
        field(line, "target"),
        Some("\"/x%0aforged=1%22q\""),
        "{line}"
    );
    assert_eq!(field(line, "status"), Some("200"));
    assert_eq!(
        field(line, "upstream"),
        Some(up.local_addr().to_string().as_str())
    );
    assert_eq!(field(line, "attempts"), Some("1"));
    assert_eq!(field(line, "request_id"), Some("direct-1"));
    assert_eq!(log.write_errors(), 0);
    proxy.shutdown().await;
}
