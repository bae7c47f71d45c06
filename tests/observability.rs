//! The `obs` layer end to end: exact metrics after a known mix of requests through a proxy with
//! the admin listener, the same metrics in an axum app, trace context and request ids reaching
//! the upstream, the request span's fields, and `promtool` accepting `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use http::Request;
use pingora_tower::middleware;
use pingora_tower::middleware::obs::{Metrics, ObsLayer};
use pingora_tower::middleware::rate_limit::RateLimitLayer;
use pingora_tower::middleware::retry::RetryLayer;
use pingora_tower::proxy::{HealthCheck, PingoraProxy, Route, RunningProxy, Upstream};
use pingora_tower::{server, ServeTower};
use pingora_tower_test_support::*;

async fn wait_unhealthy(proxy: &RunningProxy, addr: SocketAddr) {
    for _ in 0..400 {
        if proxy
            .backends()
            .iter()
            .any(|b| b.addr == addr && !b.healthy)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} never marked down");
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text scrape.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the sample `name{labels}` in a Prometheus text scrape (labels in the
/// encoder's order: sorted by name).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.parse().ok())
}

async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    tokio::time::timeout(HANG_GUARD, http_get(admin, path))
        .await
        .expect("admin answered")
}

/// The proxy of the mix: `/` to a healthy backend and a dead one its health check marks down,
/// `/slow` to a backend that never answers in time, `/open` to a backend whose breaker is open.
/// Rate limit 6 per minute outermost, then a 300 ms timeout, one retry, a breaker per backend.
struct Mix {
    proxy: RunningProxy,
    main: ScriptedUpstream,
    slow: ScriptedUpstream,
    broken: ScriptedUpstream,
    dead: SocketAddr,
}

async fn mix() -> Mix {
    let (main, slow, broken) = (
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
        ScriptedUpstream::start().await,
    );
    let dead = refusing_addr();
    let metrics = Metrics::new();
    let limiter = RateLimitLayer::builder(6, Duration::from_secs(60))
        .observer(Arc::new(metrics.clone()))
        .build()
        .unwrap();
    let retry = RetryLayer::builder(1)
        .observer(Arc::new(metrics.clone()))
        .build()
        .unwrap();
    let breaker = middleware::circuit_breaker::CircuitBreakerLayer::builder()
        .on_state_transition(metrics.on_breaker_transition())
        .build()
        .unwrap();
    let handle = breaker.handle();
    metrics.watch_breakers(handle.clone());
    let check = HealthCheck::tcp()
        .interval(Duration::from_millis(50))
        .unhealthy_after(1);
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([
            Route::prefix(
                "/",
                Upstream::weighted([(main.url(), 1), (format!("http://{dead}"), 1)])
                    .health_check(check),
            ),
            Route::prefix("/slow", Upstream::new(slow.url())),
            Route::prefix("/open", Upstream::new(broken.url())),
        ])
        .admin("127.0.0.1:0")
        .metrics(metrics)
        .middleware(limiter)
        .middleware(middleware::timeout(1_000))
        .middleware(retry)
        .middleware(breaker)
        .spawn()
        .await
        .unwrap();
    handle.force_open(&broken.addr().to_string());
    wait_unhealthy(&proxy, dead).await;
    Mix {
        proxy,
        main,
        slow,
        broken,
        dead,
    }
}

impl Mix {
    /// Three 200s, a 503 retried into a 200, a 504, a 503 from the open breaker, a 429.
    async fn send(&self) {
        let addr = self.proxy.local_addr();
        for _ in 0..3 {
            assert_eq!(get_status(addr, "/").await, StatusCode::OK);
        }
        self.main.script.queue(&[503]);
        assert_eq!(get_status(addr, "/").await, StatusCode::OK);
        assert_eq!(get_status(addr, "/slow").await, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            get_status(addr, "/open").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_status(addr, "/").await, StatusCode::TOO_MANY_REQUESTS);
        self.slow.script.release_all();
    }

    async fn shutdown(self) {
        self.slow.script.release_all();
        self.proxy.shutdown().await;
    }
}

#[tokio::test]
async fn metrics_and_status_are_exactly_what_the_mix_implies() {
    let mix = mix().await;
    let admin = mix.proxy.admin_addr().expect("admin listener");
    mix.send().await;
    assert_eq!(mix.broken.script.seen().len(), 0);

    let (status, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let count = |labels: &str| {
        sample(&text, "http_server_request_duration_seconds_count", labels).unwrap_or(0.0)
    };
    let req = |code: &str, route: &str| {
        format!(
            r#"http_request_method="GET",http_response_status_code="{code}",http_route="{route}""#
        )
    };
    assert_eq!(count(&req("200", "/")), 4.0, "{text}");
    assert_eq!(count(&req("504", "/slow")), 1.0, "{text}");
    assert_eq!(count(&req("503", "/open")), 1.0, "{text}");
    // Refused before any upstream work, still labelled with the route it asked for.
    assert_eq!(count(&req("429", "/")), 1.0, "{text}");
    let total: f64 = sum_of(&text, "http_server_request_duration_seconds_count");
    assert_eq!(total, 7.0, "{text}");
    // Every request lands in the histogram's buckets, not only in its count.
    assert_eq!(
        sample(
            &text,
            "http_server_request_duration_seconds_bucket",
            &format!(r#"{},le="+Inf""#, req("200", "/"))
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(sample(&text, "http_server_active_requests", ""), Some(0.0));

    let attempt = |server: SocketAddr, code: &str, error: &str| {
        sample(
            &text,
            "http_client_request_duration_seconds_count",
            &format!(
                r#"error_type="{error}",http_response_status_code="{code}",server_address="{server}""#
            ),
        )
    };
    let main = mix.main.addr();
    assert_eq!(attempt(main, "200", ""), Some(4.0), "{text}");
    assert_eq!(attempt(main, "503", ""), Some(1.0), "{text}");
    assert_eq!(attempt(mix.slow.addr(), "", "timeout"), Some(1.0), "{text}");
    let attempts: f64 = sum_of(&text, "http_client_request_duration_seconds_count");
    assert_eq!(
        attempts, 6.0,
        "no attempt to the open or the dead backend:\n{text}"
    );

    let up = |route: &str, backend: SocketAddr| {
        sample(
            &text,
            "pingora_tower_backend_up",
            &format!(r#"backend="{backend}",upstream="{route}""#),
        )
    };
    assert_eq!(up("/", main), Some(1.0));
    assert_eq!(up("/", mix.dead), Some(0.0));
    assert_eq!(up("/slow", mix.slow.addr()), Some(1.0));
    assert_eq!(up("/open", mix.broken.addr()), Some(1.0));

    let breaker = |b: SocketAddr, state: &str| {
        sample(
            &text,
            "pingora_tower_circuit_breaker_state",
            &format!(r#"breaker="{b}",state="{state}""#),
        )
    };
    assert_eq!(breaker(mix.broken.addr(), "open"), Some(1.0), "{text}");
    assert_eq!(breaker(mix.broken.addr(), "closed"), Some(0.0));
    assert_eq!(breaker(main, "closed"), Some(1.0), "{text}");
    assert_eq!(breaker(main, "open"), Some(0.0));
    // One timeout is no reason to open the slow backend's breaker.
    assert_eq!(breaker(mix.slow.addr(), "closed"), Some(1.0), "{text}");
    let transitions: f64 = sum_of(&text, "pingora_tower_circuit_breaker_transitions_total");
    assert_eq!(transitions, 1.0, "only the forced open: {text}");
    assert_eq!(
        sample(
            &text,
            "pingora_tower_circuit_breaker_transitions_total",
            &format!(r#"breaker="{}",state="open""#, mix.broken.addr())
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pingora_tower_rate_limit_rejections_total", ""),
        Some(1.0)
    );
    assert_eq!(sample(&text, "pingora_tower_retries_total", ""), Some(1.0));
    assert_eq!(
        sample(&text, "pingora_tower_retry_budget_exhausted_total", ""),
        Some(0.0)
    );

    let (status, json) = admin_get(admin, "/status").await;
    assert_eq!(status, StatusCode::OK);
    for part in [
        r#""active_requests":0"#.to_owned(),
        r#""last_minute":{"requests":7,"#.to_owned(),
        r#""rate_limit_rejections":1,"retries":1,"retry_budget_exhausted":0"#.to_owned(),
        format!(r#""address":"{main}","weight":1,"healthy":true,"breaker":"closed""#),
        format!(
            r#""address":"{}","weight":1,"healthy":false,"breaker":null"#,
            mix.dead
        ),
        format!(
            r#""address":"{}","weight":1,"healthy":true,"breaker":"forced_open""#,
            mix.broken.addr()
        ),
        r#"{"name":"/slow","#.to_owned(),
        format!(
            r#""address":"{}","weight":1,"healthy":true,"breaker":"closed""#,
            mix.slow.addr()
        ),
    ] {
        assert!(json.contains(&part), "{part} not in {json}");
    }

    let (status, page) = admin_get(admin, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<meta http-equiv=\"refresh\""));
    assert!(page.contains("<svg"));
    assert!(page.contains(&mix.dead.to_string()) && page.contains("DOWN"));
    assert!(!page.contains("http://") || !page.contains("<script"));
    assert_eq!(admin_get(admin, "/nope").await.0, StatusCode::NOT_FOUND);
    mix.shutdown().await;
}

#[tokio::test]
async fn no_admin_no_listener_and_no_route_labels() {
    let up = ScriptedUpstream::start().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/", Upstream::new(up.url()))])
        .spawn()
        .await
        .unwrap();
    assert_eq!(proxy.admin_addr(), None);
    assert!(proxy.metrics().is_none());
    assert_eq!(get_status(proxy.local_addr(), "/").await, StatusCode::OK);
    proxy.shutdown().await;
}

/// Records the fields of every `request` span, by span id.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<HashMap<u64, HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "request" {
            let mut fields = HashMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().insert(id.into_u64(), fields);
        }
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(fields) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

#[tokio::test]
async fn traceparent_and_request_id_reach_the_upstream_and_the_span_has_route_and_status() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    // The current-thread test runtime runs the proxy on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();

    let up = ScriptedUpstream::start().await;
    // By default a client's request id is passed on and none is made.
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/api", Upstream::new(up.url()))])
        .metrics(Metrics::new())
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        get_status(proxy.local_addr(), "/api/none").await,
        StatusCode::OK
    );
    let seen = up.script.seen().pop().unwrap();
    assert!(!seen.contains_key("x-request-id"), "{seen:?}");
    proxy.shutdown().await;

    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/api", Upstream::new(up.url()))])
        .observability(ObsLayer::new().generate_request_ids(true))
        .metrics(Metrics::new())
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();

    // A caller's trace is continued: same trace id, our span as the parent.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("/api/items")
        .header("host", addr.to_string())
        .header("traceparent", incoming)
        .header("x-request-id", "client-id-1")
        .body(empty())
        .unwrap();
    let res = send(addr, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    body_text(res).await;
    // None sent: a request id is made (asked for above); no trace is started unless asked.
    assert_eq!(get_status(addr, "/api/other").await, StatusCode::OK);

    // The two requests after the first.
    let seen = &up.script.seen()[1..];
    assert_eq!(seen.len(), 2);
    let tp = seen[0]["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(tp.ends_with("-01"));
    assert_ne!(
        &tp[36..52],
        "00f067aa0ba902b7",
        "the proxy is the upstream's parent"
    );
    assert_eq!(seen[0]["x-request-id"], "client-id-1");
    assert!(!seen[1].contains_key("traceparent"));
    let made = seen[1]["x-request-id"].to_str().unwrap();
    assert!(
        made.len() == 32 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );

    let spans = spans.0.lock().unwrap().clone();
    let first = spans
        .values()
        .find(|f| f.get("url.path").map(String::as_str) == Some("/api/items"))
        .unwrap_or_else(|| panic!("no span for /api/items: {spans:?}"));
    assert_eq!(first["http.route"], "/api");
    assert_eq!(first["http.response.status_code"], "200");
    assert_eq!(first["http.request.method"], "GET");
    assert_eq!(first["request_id"], "client-id-1");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["server.address"], up.addr().to_string());
    assert_eq!(first["attempts"], "1");
    assert!(first.contains_key("latency_ms"));
    proxy.shutdown().await;

    // Another header name, and traces started at the proxy: the request id is the trace id.
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([Route::prefix("/api", Upstream::new(up.url()))])
        .observability(
            ObsLayer::new()
                .request_id_header(Some(http::HeaderName::from_static("x-correlation-id")))
                .generate_request_ids(true)
                .start_traces(true)
                .metrics(Metrics::new()),
        )
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        get_status(proxy.local_addr(), "/api/x").await,
        StatusCode::OK
    );
    let seen = up.script.seen().last().cloned().unwrap();
    let tp = seen["traceparent"].to_str().unwrap();
    assert_eq!(tp.len(), 55);
    assert_eq!(seen["x-correlation-id"].to_str().unwrap(), &tp[3..35]);
    assert!(!seen.contains_key("x-request-id"));
    assert!(proxy.metrics().is_some());
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_axum_app_gets_the_same_metrics_and_serves_them_in_one_line() {
    init_tracing();
    let metrics = Metrics::new();
    assert_eq!(metrics.recent(60).requests, 0);
    metrics.keep_recent();
    let m = metrics.clone();
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/users", post(|| async { StatusCode::CREATED }))
        .route_layer(
            ObsLayer::new()
                .metrics(metrics.clone())
                .generate_request_ids(true)
                .echo_request_id(true),
        )
        .route("/metrics", get(move || std::future::ready(m.response())));
    let server = server::spawn("127.0.0.1:0", ServeTower::new(app))
        .await
        .unwrap();
    let addr = server.local_addr();
    for path in ["/users/1", "/users/2"] {
        let res = send(addr, get_request(addr, path)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().contains_key("x-request-id"));
        body_text(res).await;
    }
    let req = Request::post("/users")
        .header("host", addr.to_string())
        .header("x-request-id", "abc")
        .body(empty())
        .unwrap();
    let res = send(addr, req).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-request-id"], "abc");
    body_text(res).await;

    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let count = |labels: &str| sample(&text, "http_server_request_duration_seconds_count", labels);
    assert_eq!(
        count(
            r#"http_request_method="GET",http_response_status_code="200",http_route="/users/{id}""#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        count(r#"http_request_method="POST",http_response_status_code="201",http_route="/users""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "http_server_active_requests", ""), Some(0.0));
    assert_eq!(metrics.recent(60).requests, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let required = std::env::var("CI_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !required,
            "promtool is required (CI_REQUIRE_TOOLS=1) but missing"
        );
        eprintln!("skipped: promtool not installed (Debian package `prometheus`)");
        return;
    }
    let mix = mix().await;
    mix.send().await;
    let admin = mix.proxy.admin_addr().unwrap();
    let (_, text) = admin_get(admin, "/metrics").await;
    mix.shutdown().await;

    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_demo_serves_its_metrics_on_the_admin_listener_it_prints() {
    use pingora_tower_examples::demo::{self, DemoConfig};
    init_tracing();
    let demo = demo::spawn(&DemoConfig::new("127.0.0.1:0"))
        .await
        .expect("demo");
    let admin = demo
        .admin_addr()
        .expect("the demo starts its admin listener");
    assert!(admin.ip().is_loopback());
    assert!(demo
        .curl_lines()
        .iter()
        .any(|l| l.contains(&format!("http://{admin}/metrics"))));
    assert_eq!(get_status(demo.proxy_addr(), "/").await, StatusCode::OK);
    let (status, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sample(
            &text,
            "http_server_request_duration_seconds_count",
            r#"http_request_method="GET",http_response_status_code="200",http_route="/""#
        ),
        Some(1.0),
        "{text}"
    );
    demo.shutdown().await;
}

/// Routes that name hosts: the route label comes from the host and the path, as the routing
/// proxy chose (the route table is asked again at logging).
#[tokio::test]
async fn routes_that_name_hosts_label_their_requests() {
    let up = ScriptedUpstream::start().await;
    let proxy = PingoraProxy::builder("127.0.0.1:0")
        .routes([
            Route::prefix("/", Upstream::new(up.url())).with_host("a.example"),
            Route::prefix("/", Upstream::new(up.url())).with_host("*.b.example"),
            Route::prefix("/api", Upstream::new(up.url())),
        ])
        .metrics(Metrics::new())
        .spawn()
        .await
        .unwrap();
    let addr = proxy.local_addr();
    for (host, path) in [
        ("a.example", "/x"),
        ("A.Example.", "/y"),
        ("c.b.example", "/"),
        ("other.example", "/api/z"),
        ("other.example", "/nowhere"),
    ] {
        get_with_host(addr, host, path).await;
    }
    let text = proxy.metrics().unwrap().render();
    let count = |route: &str, code: &str| {
        sample(
            &text,
            "http_server_request_duration_seconds_count",
            &format!(
                r#"http_request_method="GET",http_response_status_code="{code}",http_route="{route}""#
            ),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("a.example/", "200"), 2.0, "{text}");
    assert_eq!(count("*.b.example/", "200"), 1.0, "{text}");
    assert_eq!(count("/api", "200"), 1.0, "{text}");
    assert_eq!(count("", "404"), 1.0, "{text}");
    proxy.shutdown().await;
}
