//! [`Metrics`]: one Prometheus registry with the HTTP server and client metrics, backend
//! health, breaker states and the layers' decisions.
//!
//! Names follow OpenTelemetry's HTTP semantic conventions in Prometheus form (dots become
//! underscores, seconds as the unit). Every label value comes from a bounded set: methods from a
//! fixed list plus `_OTHER`, statuses from a fixed list plus one bucket per class, routes,
//! backends, upstreams and breakers from the configuration, error types from a fixed enum.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::time::Instant;

use super::handles::HandleCache;
use super::labels;
use super::recent::{Recent, Summary};
use crate::observe::Observer;

/// Upper bounds of the latency buckets, in seconds: 100 µs to 60 s, dense where a proxy's
/// latencies are (sub-millisecond to a second).
pub const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Name of the server request duration histogram.
pub const SERVER_DURATION: &str = "http_server_request_duration_seconds";
/// Name of the in-flight requests gauge.
pub const ACTIVE_REQUESTS: &str = "http_server_active_requests";
/// Name of the per-attempt upstream duration histogram.
pub const CLIENT_DURATION: &str = "http_client_request_duration_seconds";
/// Name of the backend health gauge.
pub const BACKEND_UP: &str = "pingora_tower_backend_up";
/// Name of the breaker state gauge.
pub const BREAKER_STATE: &str = "pingora_tower_circuit_breaker_state";
/// Name of the breaker transitions counter.
pub const BREAKER_TRANSITIONS: &str = "pingora_tower_circuit_breaker_transitions_total";
/// Name of the rate limiter's rejections counter.
pub const RATE_LIMITED: &str = "pingora_tower_rate_limit_rejections_total";
/// Name of the granted retries counter.
pub const RETRIES: &str = "pingora_tower_retries_total";
/// Name of the counter of retries refused by an empty budget.
pub const RETRY_BUDGET_EXHAUSTED: &str = "pingora_tower_retry_budget_exhausted_total";

/// The breaker states the state gauge reports (the forced states count as the state they
/// force, a disabled breaker as closed).
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// The metrics of one proxy or app. Cheap to clone (an `Arc`); every clone records into the same
/// registry. It is also an [`Observer`] for the rate limit and retry layers.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    server_duration: HistogramVec,
    server_handles: HandleCache,
    active: IntGauge,
    client_duration: HistogramVec,
    client_handles: HandleCache,
    backend_up: IntGaugeVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    rate_limited: IntCounter,
    retries: IntCounter,
    retry_budget_exhausted: IntCounter,
    /// Kept once asked for ([`Metrics::keep_recent`]): only a status page reads it.
    recent: std::sync::OnceLock<Recent>,
    origin: Instant,
    /// Breakers whose states are read at each render.
    #[cfg(feature = "circuit-breaker")]
    watched: std::sync::Mutex<Vec<crate::circuit_breaker::CircuitBreakerHandle>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    let vec = HistogramVec::new(opts, labels).unwrap_or_else(|e| unreachable(e));
    register(registry, vec)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    if let Err(e) = registry.register(Box::new(c.clone())) {
        // Only a name registered twice fails, and this registry is ours alone.
        tracing::error!(error = %e, "metrics: could not register a metric");
    }
    c
}

/// The metric definitions above are constants: an invalid one is a bug caught by the tests.
#[cold]
fn unreachable(e: prometheus::Error) -> ! {
    panic!("invalid metric definition: {e}")
}

impl Metrics {
    /// A fresh registry holding every metric, at zero.
    pub fn new() -> Self {
        Self::in_registry(Registry::new())
    }

    /// Every metric, registered in `registry`: e.g. `prometheus::default_registry().clone()`,
    /// which Pingora's Prometheus service (`pingora-prometheus`) serves. Only one `Metrics`
    /// fits in one registry (the names would clash; the second one's metrics stay
    /// unregistered and a `tracing` error says so).
    pub fn in_registry(registry: Registry) -> Self {
        let server_duration = histogram(
            &registry,
            SERVER_DURATION,
            "Duration of HTTP server requests.",
            &[
                "http_request_method",
                "http_response_status_code",
                "http_route",
            ],
        );
        let client_duration = histogram(
            &registry,
            CLIENT_DURATION,
            "Duration of each attempt to an upstream, to its response head or failure.",
            &["server_address", "http_response_status_code", "error_type"],
        );
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                IntGauge::new(name, help).unwrap_or_else(|e| unreachable(e)),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable(e)),
            )
        };
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).unwrap_or_else(|e| unreachable(e)),
            )
        };
        let active = gauge(ACTIVE_REQUESTS, "Number of HTTP server requests in flight.");
        let backend_up = gauge_vec(
            BACKEND_UP,
            "Whether a backend is healthy (1) or not (0).",
            &["upstream", "backend"],
        );
        let breaker_state = gauge_vec(
            BREAKER_STATE,
            "Circuit breaker state: 1 on the current state.",
            &["breaker", "state"],
        );
        let breaker_transitions = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    BREAKER_TRANSITIONS,
                    "Circuit breaker transitions, by state entered.",
                ),
                &["breaker", "state"],
            )
            .unwrap_or_else(|e| unreachable(e)),
        );
        Metrics {
            inner: Arc::new(Inner {
                server_duration,
                // Labels: method, status, route.
                server_handles: HandleCache::new(2),
                active,
                client_duration,
                // Labels: server address, status, error type.
                client_handles: HandleCache::new(0),
                backend_up,
                breaker_state,
                breaker_transitions,
                rate_limited: counter(RATE_LIMITED, "Requests refused by a rate limiter."),
                retries: counter(RETRIES, "Retries granted."),
                retry_budget_exhausted: counter(
                    RETRY_BUDGET_EXHAUSTED,
                    "Retries refused because the retry budget was empty.",
                ),
                registry,
                recent: std::sync::OnceLock::new(),
                origin: Instant::now(),
                #[cfg(feature = "circuit-breaker")]
                watched: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// The registry, to gather or to serve through another exporter (e.g. Pingora's
    /// Prometheus service, registering its collectors in the default registry too).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The registry in Prometheus's text format.
    pub fn render(&self) -> String {
        #[cfg(feature = "circuit-breaker")]
        self.refresh_breakers();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.inner.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics: could not encode the registry");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`render`](Self::render) as an HTTP response with its `Content-Type`, for an app's
    /// `/metrics` route: `.route("/metrics", get(move || std::future::ready(m.response())))`.
    pub fn response(&self) -> http::Response<String> {
        let mut res = http::Response::new(self.render());
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(Self::CONTENT_TYPE),
        );
        res
    }

    /// The `Content-Type` of [`render`](Self::render)'s text.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// A request started (the active requests gauge goes up until the guard drops).
    pub fn request_started(&self) -> ActiveGuard {
        self.inner.active.inc();
        ActiveGuard {
            metrics: self.clone(),
        }
    }

    /// A request started, without a guard: the caller calls [`request_ended`](Self::request_ended)
    /// exactly once (the tower host's response future, which already holds the metrics).
    pub(crate) fn request_began(&self) {
        self.inner.active.inc();
    }

    /// The end of a request counted by [`request_began`](Self::request_began).
    pub(crate) fn request_ended(&self) {
        self.inner.active.dec();
    }

    /// One finished server request.
    pub fn record_request(
        &self,
        method: &'static str,
        status: &'static str,
        route: &str,
        latency: Duration,
        now: Instant,
    ) {
        let secs = latency.as_secs_f64();
        self.inner.server_handles.observe(
            &self.inner.server_duration,
            route,
            [method, status],
            secs,
        );
        if let Some(recent) = self.inner.recent.get() {
            let second = now.saturating_duration_since(self.inner.origin).as_secs();
            recent.record(second, secs);
        }
    }

    /// One finished upstream attempt: with the upstream's `status`, or failed with `error`.
    pub fn record_attempt(
        &self,
        server_address: &str,
        outcome: Result<&'static str, labels::AttemptError>,
        latency: Duration,
    ) {
        let (status, error) = match outcome {
            Ok(status) => (status, ""),
            Err(e) => ("", e.as_str()),
        };
        self.inner.client_handles.observe(
            &self.inner.client_duration,
            server_address,
            [status, error],
            latency.as_secs_f64(),
        );
    }

    /// Sets a backend's health.
    pub fn set_backend_up(&self, upstream: &str, backend: &str, up: bool) {
        if let Ok(g) = self
            .inner
            .backend_up
            .get_metric_with_label_values(&[upstream, backend])
        {
            g.set(i64::from(up));
        }
    }

    /// Sets a breaker's current state (one of [`BREAKER_STATES`]): 1 on it, 0 on the others.
    pub fn set_breaker_state(&self, breaker: &str, state: &str) {
        for s in BREAKER_STATES {
            if let Ok(g) = self
                .inner
                .breaker_state
                .get_metric_with_label_values(&[breaker, s])
            {
                g.set(i64::from(s == state));
            }
        }
    }

    /// A breaker entered `state` (one of [`BREAKER_STATES`]): counts the transition and sets
    /// the state gauge.
    pub fn breaker_transition(&self, breaker: &str, state: &str) {
        if let Ok(c) = self
            .inner
            .breaker_transitions
            .get_metric_with_label_values(&[breaker, state])
        {
            c.inc();
        }
        self.set_breaker_state(breaker, state);
    }

    /// Keeps the last [`SECONDS`](super::recent::SECONDS) seconds of requests from now on,
    /// for [`recent`](Self::recent) and [`recent_series`](Self::recent_series) (the proxy's
    /// admin listener calls it). Off until asked for: it is one more shared counter written per
    /// request, and 45 KiB, that only a status page reads.
    pub fn keep_recent(&self) {
        self.inner.recent.get_or_init(Recent::new);
    }

    /// Requests per second and p95/p99 latency over the last `seconds` (at most
    /// [`SECONDS`](super::recent::SECONDS)) seconds, the current one included; zero before
    /// [`keep_recent`](Self::keep_recent).
    pub fn recent(&self, seconds: u64) -> Summary {
        self.inner
            .recent
            .get()
            .map(|r| r.summary(self.second_now(), seconds))
            .unwrap_or_default()
    }

    /// [`recent`](Self::recent) for each of the last `seconds` seconds, oldest first.
    pub fn recent_series(&self, seconds: u64) -> Vec<Summary> {
        match self.inner.recent.get() {
            Some(r) => r.series(self.second_now(), seconds),
            None => vec![Summary::default(); self.second_now().min(seconds) as usize],
        }
    }

    fn second_now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.inner.origin)
            .as_secs()
    }

    /// Upstream attempts so far per backend: `(server_address, answered, failed)`, where
    /// answered attempts got a response head (any status) and failed ones an error.
    pub fn attempts_by_backend(&self) -> Vec<(String, u64, u64)> {
        use prometheus::core::Collector;
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        for family in self.inner.client_duration.collect() {
            for m in family.get_metric() {
                let mut address = "";
                let mut failed = false;
                for l in m.get_label() {
                    match l.name() {
                        "server_address" => address = l.value(),
                        "error_type" => failed = !l.value().is_empty(),
                        _ => {}
                    }
                }
                let count = m.get_histogram().get_sample_count();
                let row = match out.iter_mut().position(|r| r.0 == address) {
                    Some(i) => &mut out[i],
                    None => {
                        out.push((address.to_owned(), 0, 0));
                        let last = out.len() - 1;
                        &mut out[last]
                    }
                };
                if failed {
                    row.2 += count;
                } else {
                    row.1 += count;
                }
            }
        }
        out
    }

    /// Requests refused by rate limiters so far.
    pub fn rate_limited_total(&self) -> u64 {
        self.inner.rate_limited.get()
    }

    /// Retries granted so far.
    pub fn retries_total(&self) -> u64 {
        self.inner.retries.get()
    }

    /// Retries refused by an empty budget so far.
    pub fn retry_budget_exhausted_total(&self) -> u64 {
        self.inner.retry_budget_exhausted.get()
    }

    /// Requests in flight.
    pub fn active_requests(&self) -> i64 {
        self.inner.active.get()
    }
}

/// The state gauge's label for a breaker state.
#[cfg(feature = "circuit-breaker")]
pub fn breaker_state_label(state: crate::circuit_breaker::State) -> &'static str {
    use crate::circuit_breaker::State;
    match state {
        State::Closed | State::ForcedClosed | State::Disabled => "closed",
        State::Open | State::ForcedOpen => "open",
        State::HalfOpen => "half_open",
    }
}

#[cfg(feature = "circuit-breaker")]
impl Metrics {
    /// A callback for
    /// [`CircuitBreakerBuilder::on_state_transition`](crate::circuit_breaker::CircuitBreakerBuilder::on_state_transition)
    /// that counts transitions and keeps the state gauge current.
    pub fn on_breaker_transition(
        &self,
    ) -> impl Fn(&str, crate::circuit_breaker::State, crate::circuit_breaker::State)
           + Send
           + Sync
           + 'static {
        let metrics = self.clone();
        move |key, _from, to| metrics.breaker_transition(key, breaker_state_label(to))
    }

    /// Reads the state of every breaker of `handle` at each [`render`](Self::render), so
    /// breakers that never changed state show as `closed` too.
    pub fn watch_breakers(&self, handle: crate::circuit_breaker::CircuitBreakerHandle) {
        if let Ok(mut watched) = self.inner.watched.lock() {
            watched.push(handle);
        }
    }

    /// Every watched breaker with its state.
    pub fn breaker_states(&self) -> Vec<(String, crate::circuit_breaker::State)> {
        let Ok(watched) = self.inner.watched.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for handle in watched.iter() {
            for key in handle.keys() {
                if let Some(state) = handle.state(&key) {
                    out.push((key, state));
                }
            }
        }
        out
    }

    fn refresh_breakers(&self) {
        for (key, state) in self.breaker_states() {
            self.set_breaker_state(&key, breaker_state_label(state));
        }
    }
}

impl Observer for Metrics {
    fn rate_limited(&self) {
        self.inner.rate_limited.inc();
    }

    fn retried(&self) {
        self.inner.retries.inc();
    }

    fn retry_budget_exhausted(&self) {
        self.inner.retry_budget_exhausted.inc();
    }
}

/// Holds one in-flight request in the active requests gauge; dropping it (however the request
/// ended, cancelled included) takes it out.
#[derive(Debug)]
pub struct ActiveGuard {
    metrics: Metrics,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.metrics.inner.active.dec();
    }
}

#[cfg(feature = "circuit-breaker")]
impl Metrics {
    /// The breaker for `key` among the watched handles (see
    /// [`watch_breakers`](Self::watch_breakers)), if one exists. Never creates one, so a
    /// caller naming unknown keys (an admin request) cannot grow a registry.
    pub fn find_breaker(&self, key: &str) -> Option<crate::circuit_breaker::Breaker> {
        let watched = self.inner.watched.lock().ok()?;
        watched.iter().find_map(|handle| handle.breaker(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_and_rendered() {
        let m = Metrics::new();
        m.record_request("GET", "200", "/", Duration::from_millis(3), Instant::now());
        m.record_attempt("127.0.0.1:1", Ok("200"), Duration::from_millis(2));
        m.record_attempt(
            "127.0.0.1:1",
            Err(labels::AttemptError::Connect),
            Duration::from_millis(1),
        );
        m.set_backend_up("/", "127.0.0.1:1", true);
        m.breaker_transition("127.0.0.1:1", "open");
        m.rate_limited();
        m.retried();
        m.retry_budget_exhausted();
        let guard = m.request_started();
        let text = m.render();
        drop(guard);
        for name in [
            SERVER_DURATION,
            ACTIVE_REQUESTS,
            CLIENT_DURATION,
            BACKEND_UP,
            BREAKER_STATE,
            BREAKER_TRANSITIONS,
            RATE_LIMITED,
            RETRIES,
            RETRY_BUDGET_EXHAUSTED,
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("http_server_active_requests 1"));
        assert!(text.contains(
            r#"pingora_tower_circuit_breaker_state{breaker="127.0.0.1:1",state="open"} 1"#
        ));
        assert!(text.contains(
            r#"pingora_tower_circuit_breaker_state{breaker="127.0.0.1:1",state="closed"} 0"#
        ));
        assert!(text.contains(
            r#"http_client_request_duration_seconds_count{error_type="connect",http_response_status_code="",server_address="127.0.0.1:1"} 1"#
        ), "{text}");
        assert_eq!(m.active_requests(), 0);
    }
}
