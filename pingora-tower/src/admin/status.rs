//! The `/status` view: routes, backends and their health and breaker state, the last minute's
//! rate and latency, and the layers' refusals.

use std::fmt::Write;
use std::sync::Arc;

use middlewares::circuit_breaker::State;
use middlewares::obs::{breaker_state_label, Metrics};
use tokio::time::Instant;

use super::json;
use crate::proxy::RoutingProxy;

/// Everything `/status` reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StatusView {
    /// Seconds since the proxy started.
    pub uptime_seconds: u64,
    /// Requests in flight.
    pub active_requests: i64,
    /// Requests per second over the last minute.
    pub qps: f64,
    /// 95th percentile latency over the last minute, in milliseconds (bucket upper bound).
    pub p95_ms: f64,
    /// 99th percentile latency over the last minute, in milliseconds (bucket upper bound).
    pub p99_ms: f64,
    /// Requests finished in the last minute.
    pub requests_last_minute: u64,
    /// Requests refused by rate limiters since start.
    pub rate_limited: u64,
    /// Retries granted since start.
    pub retries: u64,
    /// Retries refused by an empty budget since start.
    pub retry_budget_exhausted: u64,
    /// Every route with its backends.
    pub routes: Vec<RouteView>,
}

/// One route.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteView {
    /// The route's name (`host` + `prefix`), its `http_route` label.
    pub name: String,
    /// Its backends.
    pub backends: Vec<BackendView>,
}

/// One backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendView {
    /// The URL as configured.
    pub url: String,
    /// The resolved address (the `server_address` label and the breaker's key).
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// Whether the balancer sends it traffic.
    pub healthy: bool,
    /// Its breaker's state (`closed`, `open`, `half_open`, or `forced_open` / `forced_closed`
    /// after an operator's override), when a breaker watched by the metrics has one for it.
    pub breaker: Option<&'static str>,
}

pub(crate) fn collect(
    metrics: &Metrics,
    base: &RoutingProxy,
    route_labels: &Arc<[Arc<str>]>,
    started: Instant,
) -> StatusView {
    let breakers = metrics.breaker_states();
    let mut routes: Vec<RouteView> = route_labels
        .iter()
        .map(|name| RouteView {
            name: name.to_string(),
            backends: Vec::new(),
        })
        .collect();
    for b in base.backends() {
        let address = b.addr.to_string();
        let breaker = breakers
            .iter()
            .find(|(key, _)| *key == address)
            .map(|&(_, state)| status_label(state));
        if let Some(route) = routes.get_mut(b.route) {
            route.backends.push(BackendView {
                url: b.url,
                address,
                weight: b.weight,
                healthy: b.healthy,
                breaker,
            });
        }
    }
    let minute = metrics.recent(60);
    StatusView {
        uptime_seconds: started.elapsed().as_secs(),
        active_requests: metrics.active_requests(),
        qps: minute.qps,
        p95_ms: minute.p95 * 1e3,
        p99_ms: minute.p99 * 1e3,
        requests_last_minute: minute.requests,
        rate_limited: metrics.rate_limited_total(),
        retries: metrics.retries_total(),
        retry_budget_exhausted: metrics.retry_budget_exhausted_total(),
        routes,
    }
}

/// A breaker's state as `/status` and the page show it: the gauge's label, but an operator's
/// override is told apart (the gauge keeps its three states).
fn status_label(state: State) -> &'static str {
    match state {
        State::ForcedOpen => "forced_open",
        State::ForcedClosed => "forced_closed",
        other => breaker_state_label(other),
    }
}

impl StatusView {
    /// The view as a JSON object.
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(512);
        let _ = write!(
            o,
            "{{\"uptime_seconds\":{},\"active_requests\":{},\"last_minute\":{{\"requests\":{},\"qps\":",
            self.uptime_seconds, self.active_requests, self.requests_last_minute
        );
        json::number(&mut o, self.qps);
        o.push_str(",\"p95_ms\":");
        json::number(&mut o, self.p95_ms);
        o.push_str(",\"p99_ms\":");
        json::number(&mut o, self.p99_ms);
        let _ = write!(
            o,
            "}},\"rate_limit_rejections\":{},\"retries\":{},\"retry_budget_exhausted\":{},\"routes\":[",
            self.rate_limited, self.retries, self.retry_budget_exhausted
        );
        for (i, r) in self.routes.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"name\":");
            json::string(&mut o, &r.name);
            o.push_str(",\"backends\":[");
            for (j, b) in r.backends.iter().enumerate() {
                if j > 0 {
                    o.push(',');
                }
                o.push_str("{\"url\":");
                json::string(&mut o, &b.url);
                o.push_str(",\"address\":");
                json::string(&mut o, &b.address);
                let _ = write!(
                    o,
                    ",\"weight\":{},\"healthy\":{},\"breaker\":",
                    b.weight, b.healthy
                );
                match b.breaker {
                    Some(s) => json::string(&mut o, s),
                    None => o.push_str("null"),
                }
                o.push('}');
            }
            o.push_str("]}");
        }
        o.push_str("]}");
        o
    }
}
