//! Forcing a backend's circuit breaker through the admin listener
//! (`ProxyBuilder::admin_breaker_control`): a forced-open backend gets no traffic, a
//! forced-closed one keeps getting it while it fails, `reset` hands it back to the breaker,
//! unknown keys create nothing, and without the opt-in nothing changes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use http::Request;
use pingora_tower::middleware::circuit_breaker::{
    CircuitBreakerHandle, CircuitBreakerLayer, State as BreakerState,
};
use pingora_tower::middleware::obs::Metrics;
use pingora_tower::proxy::{PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower::ProxyConfigError;
use pingora_tower_test_support::*;

/// `/` balanced over `a` and `b`, `/solo` to `c` alone; a breaker per backend that opens after
/// three failures in a row; the admin listener on loopback.
struct Setup {
    proxy: RunningProxy,
    admin: SocketAddr,
    handle: CircuitBreakerHandle,
    a: ScriptedUpstream,
    b: ScriptedUpstream,
    c: ScriptedUpstream,
}

async fn setup(control: bool) -> Setup {
    let (a, b, c) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let metrics = Metrics::new();
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .on_state_transition(metrics.on_breaker_transition())
        .build()
        .unwrap();
    let handle = breaker.handle();
    metrics.watch_breakers(handle.clone());
    let mut builder = PingoraProxy::builder("127.0.0.1:0")
        .routes([
            Route::prefix("/", Upstream::weighted([(a.url(), 1), (b.url(), 1)])),
            Route::prefix("/solo", Upstream::new(c.url())),
        ])
        .admin("127.0.0.1:0")
        .metrics(metrics)
        .middleware(breaker);
    if control {
        builder = builder.admin_breaker_control(true);
    }
    let proxy = builder.spawn().await.unwrap();
    let admin = proxy.admin_addr().expect("admin listener");
    let setup = Setup {
        proxy,
        admin,
        handle,
        a,
        b,
        c,
    };
    // Breakers exist once the proxy has offered their backend.
    for _ in 0..4 {
        assert_eq!(setup.get("/").await, StatusCode::OK);
    }
    assert_eq!(setup.get("/solo").await, StatusCode::OK);
    assert!(setup.a.script.hits() > 0 && setup.b.script.hits() > 0);
    let keys = setup.handle.keys();
    for up in [&setup.a, &setup.b, &setup.c] {
        assert!(keys.contains(&up.breaker_key()), "{keys:?}");
    }
    setup
}

impl Setup {
    async fn get(&self, path: &str) -> StatusCode {
        get_status(self.proxy.local_addr(), path).await
    }

    /// `method path` on the admin listener: status, `Allow` header and body.
    async fn admin(&self, method: &str, path: &str) -> (StatusCode, Option<String>, String) {
        let host = self.admin.to_string();
        self.admin_with(method, path, &[("host", &host)]).await
    }

    /// [`admin`](Self::admin) with these headers (`Host` among them, or none).
    async fn admin_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, String) {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(empty()).unwrap();
        let res = tokio::time::timeout(HANG_GUARD, send(self.admin, req))
            .await
            .expect("admin answered");
        let status = res.status();
        let allow = res
            .headers()
            .get(http::header::ALLOW)
            .map(|v| v.to_str().unwrap().to_owned());
        (status, allow, body_text(res).await)
    }

    async fn post(&self, path: &str) -> (StatusCode, String) {
        let (status, _, body) = self.admin("POST", path).await;
        (status, body)
    }

    /// The `breaker` field `/status` shows for backend `up`.
    async fn status_breaker(&self, up: &ScriptedUpstream) -> String {
        let (status, _, json) = self.admin("GET", "/status").await;
        assert_eq!(status, StatusCode::OK);
        let field = format!(
            r#""address":"{}","weight":1,"healthy":true,"breaker":"#,
            up.breaker_key()
        );
        let at = json
            .find(&field)
            .unwrap_or_else(|| panic!("{field} in {json}"));
        json[at + field.len()..]
            .split(['}', ','])
            .next()
            .unwrap()
            .to_owned()
    }
}

#[tokio::test]
async fn forced_open_backend_gets_no_traffic_until_reset() {
    let s = setup(true).await;
    let a = s.a.breaker_key();
    let (status, body) = s.post(&format!("/breakers/{a}/open")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        format!(r#"{{"breaker":"{a}","state":"forced-open"}}"#)
    );
    assert_eq!(s.handle.state(&a), Some(BreakerState::ForcedOpen));
    assert_eq!(s.status_breaker(&s.a).await, r#""forced_open""#);
    assert_eq!(s.status_breaker(&s.b).await, r#""closed""#);
    let (_, _, page) = s.admin("GET", "/").await;
    assert!(page.contains(&a), "the status page lists {a}");
    let (_, _, metrics) = s.admin("GET", "/metrics").await;
    for line in [
        format!(r#"pingora_tower_circuit_breaker_state{{breaker="{a}",state="open"}} 1"#),
        format!(
            r#"pingora_tower_circuit_breaker_transitions_total{{breaker="{a}",state="open"}} 1"#
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }

    // Every request avoids `a`; `b` answers them all.
    let (a_before, b_before) = (s.a.script.hits(), s.b.script.hits());
    for _ in 0..6 {
        assert_eq!(s.get("/").await, StatusCode::OK);
    }
    assert_eq!(
        s.a.script.hits(),
        a_before,
        "a forced-open backend got traffic"
    );
    assert_eq!(s.b.script.hits(), b_before + 6);

    // Only other methods than POST are refused, and they change nothing.
    let (status, allow, _) = s.admin("GET", &format!("/breakers/{a}/reset")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(allow.as_deref(), Some("POST"));
    assert_eq!(s.handle.state(&a), Some(BreakerState::ForcedOpen));

    // The key may come percent-encoded (as an IPv6 one must); reset hands `a` back.
    let encoded = a.replace(':', "%3A");
    let (status, body) = s.post(&format!("/breakers/{encoded}/reset")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!(r#"{{"breaker":"{a}","state":"closed"}}"#));
    assert_eq!(s.status_breaker(&s.a).await, r#""closed""#);
    for _ in 0..6 {
        assert_eq!(s.get("/").await, StatusCode::OK);
    }
    assert!(s.a.script.hits() > a_before, "a serves again after reset");

    // The only backend of a route forced open: 503 without calling it.
    let c = s.c.breaker_key();
    assert_eq!(
        s.post(&format!("/breakers/{c}/open")).await.0,
        StatusCode::OK
    );
    let c_before = s.c.script.hits();
    assert_eq!(s.get("/solo").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.c.script.hits(), c_before);
    assert_eq!(
        s.post(&format!("/breakers/{c}/reset")).await.0,
        StatusCode::OK
    );
    assert_eq!(s.get("/solo").await, StatusCode::OK);
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn forced_closed_backend_keeps_getting_traffic_while_it_fails() {
    let s = setup(true).await;
    let c = s.c.breaker_key();
    s.c.script.answer_always(Some(500));
    let (status, body) = s.post(&format!("/breakers/{c}/closed")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        format!(r#"{{"breaker":"{c}","state":"forced-closed"}}"#)
    );
    let before = s.c.script.hits();
    for _ in 0..8 {
        assert_eq!(s.get("/solo").await, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(
        s.c.script.hits(),
        before + 8,
        "every request reached the backend"
    );
    assert_eq!(s.handle.state(&c), Some(BreakerState::ForcedClosed));
    assert_eq!(s.status_breaker(&s.c).await, r#""forced_closed""#);

    // Back to automatic operation, the same failures open it.
    assert_eq!(
        s.post(&format!("/breakers/{c}/reset")).await.0,
        StatusCode::OK
    );
    for _ in 0..3 {
        assert_eq!(s.get("/solo").await, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(s.handle.state(&c), Some(BreakerState::Open));
    assert_eq!(s.get("/solo").await, StatusCode::SERVICE_UNAVAILABLE);
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn unknown_keys_are_404_and_create_no_breaker() {
    let s = setup(true).await;
    let before = s.handle.keys().len();
    for path in [
        "/breakers/127.0.0.1:1/open".to_owned(),
        "/breakers/%5B%3A%3A1%5D%3A1/closed".to_owned(),
        "/breakers/nope/reset".to_owned(),
        format!("/breakers/{}x/open", s.a.breaker_key()),
        format!("/breakers/{}/explode", s.a.breaker_key()),
        format!("/breakers/{}", s.a.breaker_key()),
        "/breakers/".to_owned(),
    ] {
        let (status, body) = s.post(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    assert_eq!(
        s.post("/breakers/%zz/open").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(s.handle.keys().len(), before, "the registry did not grow");
    for up in [&s.a, &s.b, &s.c] {
        assert_eq!(
            s.handle.state(&up.breaker_key()),
            Some(BreakerState::Closed)
        );
    }
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn without_the_opt_in_post_is_refused_and_nothing_changes() {
    let s = setup(false).await;
    for action in ["open", "closed", "reset"] {
        let (status, body) = s
            .post(&format!("/breakers/{}/{action}", s.a.breaker_key()))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("admin_breaker_control"), "{body}");
    }
    assert_eq!(
        s.handle.state(&s.a.breaker_key()),
        Some(BreakerState::Closed)
    );
    let before = s.a.script.hits();
    for _ in 0..4 {
        assert_eq!(s.get("/").await, StatusCode::OK);
    }
    assert!(s.a.script.hits() > before, "a still serves");
    // The read-only pages are as before.
    assert_eq!(s.admin("GET", "/status").await.0, StatusCode::OK);
    assert_eq!(
        s.admin("POST", "/status").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    s.proxy.shutdown().await;
}

/// A web page the operator has open cannot force a breaker: a cross-site form post, a fetch
/// from another site, or a DNS-rebound name are refused; curl-like requests still work.
#[tokio::test]
async fn requests_a_browser_sends_for_a_web_page_are_refused() {
    let s = setup(true).await;
    let path = format!("/breakers/{}/open", s.a.breaker_key());
    let admin = s.admin.to_string();
    let port = s.admin.port().to_string();
    let rebound = format!("rebound.evil.example:{port}");
    let from_pages: [&[(&str, &str)]; 4] = [
        &[("host", &admin), ("origin", "https://evil.example")],
        &[("host", &admin), ("origin", "null")],
        &[("host", &admin), ("sec-fetch-site", "cross-site")],
        &[("host", &rebound)],
    ];
    for headers in from_pages {
        let (status, _, body) = s.admin_with("POST", &path, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {body}");
        assert!(body.contains("refused"), "{body}");
    }
    assert_eq!(
        s.handle.state(&s.a.breaker_key()),
        Some(BreakerState::Closed),
        "nothing changed"
    );
    let localhost = format!("localhost:{port}");
    let v6 = format!("[::1]:{port}");
    let from_tools: [&[(&str, &str)]; 4] = [
        &[("host", &admin)],
        &[("host", &localhost)],
        &[("host", &v6)],
        &[("host", &admin), ("sec-fetch-site", "none")],
    ];
    for headers in from_tools {
        let reset = format!("/breakers/{}/reset", s.a.breaker_key());
        let (status, _, body) = s.admin_with("POST", &reset, headers).await;
        assert_eq!(status, StatusCode::OK, "{headers:?}: {body}");
    }
    s.proxy.shutdown().await;
}

#[test]
fn breaker_control_without_admin_is_a_config_error_naming_both_settings() {
    let err = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new("http://127.0.0.1:1"))])
        .admin_breaker_control(true)
        .build()
        .expect_err("refused");
    assert_eq!(err, ProxyConfigError::BreakerControlWithoutAdmin);
    let msg = err.to_string();
    assert!(
        msg.contains("admin_breaker_control(true)") && msg.contains("admin(addr)"),
        "{msg}"
    );
    // Off is fine without an admin listener.
    assert!(PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new("http://127.0.0.1:1"))])
        .admin_breaker_control(false)
        .build()
        .is_ok());
}

/// Keeps the `warn` events of the admin control module as `key=value` lines.
#[derive(Clone, Default)]
struct Overrides(Arc<std::sync::Mutex<Vec<String>>>);

struct Line<'a>(&'a mut String);

impl tracing::field::Visit for Line<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!("{}={value} ", field.name()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Overrides {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if meta.target() == "pingora_tower::admin::control" && *meta.level() == tracing::Level::WARN
        {
            let mut line = String::new();
            event.record(&mut Line(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }
}

#[tokio::test]
async fn each_override_is_logged_at_warn_with_key_state_and_client() {
    use tracing_subscriber::layer::SubscriberExt;
    let overrides = Overrides::default();
    // The current-thread test runtime runs the admin listener on this thread.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(overrides.clone()));
    tracing::callsite::rebuild_interest_cache();
    let s = setup(true).await;
    let a = s.a.breaker_key();
    for action in ["open", "closed", "reset"] {
        assert_eq!(
            s.post(&format!("/breakers/{a}/{action}")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        s.post("/breakers/127.0.0.1:1/open").await.0,
        StatusCode::NOT_FOUND
    );
    let lines = overrides.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, state) in lines.iter().zip(["forced-open", "forced-closed", "closed"]) {
        assert!(
            line.contains(&format!("breaker={a} ")) && line.contains(&format!("state={state} ")),
            "{line}"
        );
        assert!(line.contains("client=127.0.0.1:"), "who did it: {line}");
    }
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn hostile_control_requests_get_clean_answers_and_change_nothing() {
    let s = setup(true).await;
    let before = s.handle.keys().len();
    let long = "9".repeat(4096);
    let a = s.a.breaker_key();
    let post =
        |target: &str, rest: &str| format!("POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{rest}");
    let no_body = "Content-Length: 0\r\n\r\n";
    for (raw, want) in [
        // Raw brackets and colons of an IPv6 key (unknown here).
        (post("/breakers/[::1]:1/open", no_body), 404),
        // A NUL, and a slash inside the key.
        (post("/breakers/%00/open", no_body), 404),
        (post(&format!("/breakers/{a}%2F/open"), no_body), 404),
        // An escape that decodes to invalid UTF-8.
        (post("/breakers/%E0%80/open", no_body), 400),
        (post(&format!("/breakers/{long}/open"), no_body), 404),
        // A body nobody reads, a query string, a chunked body.
        (
            post("/breakers/nope/open?x=1", "Content-Length: 5\r\n\r\nhello"),
            404,
        ),
        (
            post(
                &format!("/breakers/{a}/nope"),
                "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            404,
        ),
    ] {
        let answer = raw_exchange(s.admin, raw.as_bytes()).await;
        assert_eq!(raw_status(&answer), Some(want), "{raw:.80}: {answer:.200}");
    }
    assert_eq!(s.handle.keys().len(), before);
    for up in [&s.a, &s.b, &s.c] {
        assert_eq!(
            s.handle.state(&up.breaker_key()),
            Some(BreakerState::Closed)
        );
    }
    // Both listeners keep serving.
    assert_eq!(s.admin("GET", "/status").await.0, StatusCode::OK);
    assert_eq!(
        s.post(&format!("/breakers/{a}/reset")).await.0,
        StatusCode::OK
    );
    assert_eq!(s.get("/").await, StatusCode::OK);
    s.proxy.shutdown().await;
}
