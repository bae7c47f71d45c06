//! The status page: one HTML document, no external assets, refreshing itself; a table per
//! route with its backends, and inline-SVG sparklines of the rate and p99 latency.

use std::fmt::Write;

use middlewares::obs::Metrics;

use super::status::StatusView;

/// Seconds shown by the sparklines.
const SPARK_SECONDS: u64 = 300;
/// Seconds between refreshes.
const REFRESH_SECONDS: u32 = 5;

fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// An SVG polyline of `values` scaled to its own maximum, labelled with the latest value.
fn sparkline(out: &mut String, values: &[f64], color: &str) {
    let (w, h) = (300.0, 40.0);
    let max = values
        .iter()
        .copied()
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let step = w / (values.len().max(2) - 1) as f64;
    let _ = write!(
        out,
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\""
    );
    for (i, v) in values.iter().enumerate() {
        let _ = write!(
            out,
            "{:.1},{:.1} ",
            i as f64 * step,
            h - 2.0 - (v / max) * (h - 4.0)
        );
    }
    out.push_str("\"/></svg>");
}

pub(crate) fn render(view: &StatusView, metrics: &Metrics) -> String {
    let series = metrics.recent_series(SPARK_SECONDS);
    let qps: Vec<f64> = series.iter().map(|s| s.qps).collect();
    let p99: Vec<f64> = series.iter().map(|s| s.p99 * 1e3).collect();
    let attempts = metrics.attempts_by_backend();
    let mut o = String::with_capacity(8 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
<title>pingora-tower status</title><style>\
body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}h1{{font-size:1.3em}}\
table{{border-collapse:collapse;margin:.5em 0 1.5em}}th,td{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}\
th{{background:#eee}}.up{{background:#c8f0c8}}.down{{background:#f5b5b5}}.open,.forced_open{{background:#f5b5b5}}\
.half_open{{background:#f8e3a0}}.closed{{background:#c8f0c8}}.forced_closed{{background:#f8e3a0}}.kpi{{display:inline-block;margin-right:2em}}\
.kpi b{{font-size:1.4em;display:block}}.spark{{display:inline-block;margin-right:2em}}\
</style></head><body><h1>pingora-tower</h1><div>"
    );
    let kpis = [
        ("req/s (1 min)", format!("{:.1}", view.qps)),
        ("p95 (1 min)", format!("{:.1} ms", view.p95_ms)),
        ("p99 (1 min)", format!("{:.1} ms", view.p99_ms)),
        ("in flight", view.active_requests.to_string()),
        ("rate limited", view.rate_limited.to_string()),
        ("retries", view.retries.to_string()),
        ("uptime", format!("{} s", view.uptime_seconds)),
    ];
    for (name, value) in kpis {
        let _ = write!(o, "<span class=\"kpi\"><b>{value}</b>{name}</span>");
    }
    o.push_str("</div><p><span class=\"spark\">req/s, last 5 min<br>");
    sparkline(&mut o, &qps, "#2a6fdb");
    o.push_str("</span><span class=\"spark\">p99 ms, last 5 min<br>");
    sparkline(&mut o, &p99, "#d9480f");
    o.push_str("</span></p>");
    for route in &view.routes {
        o.push_str("<h2>route ");
        escape(&mut o, &route.name);
        o.push_str("</h2><table><tr><th>backend</th><th>address</th><th>weight</th><th>health</th><th>breaker</th><th>answered</th><th>failed</th></tr>");
        for b in &route.backends {
            let (ok, failed) = attempts
                .iter()
                .find(|a| a.0 == b.address)
                .map_or((0, 0), |a| (a.1, a.2));
            o.push_str("<tr><td>");
            escape(&mut o, &b.url);
            o.push_str("</td><td>");
            escape(&mut o, &b.address);
            let (class, health) = if b.healthy {
                ("up", "UP")
            } else {
                ("down", "DOWN")
            };
            let breaker = b.breaker.unwrap_or("-");
            let _ = write!(
                o,
                "</td><td>{}</td><td class=\"{class}\">{health}</td><td class=\"{breaker}\">{breaker}</td><td>{ok}</td><td>{failed}</td></tr>",
                b.weight
            );
        }
        o.push_str("</table>");
    }
    o.push_str(
        "<p><a href=\"/metrics\">/metrics</a> · <a href=\"/status\">/status</a></p></body></html>",
    );
    o
}
