#!/usr/bin/env bash
# A real Prometheus server against the demo (not run in CI): `bash benches/obs/prometheus.sh`.
#
# Starts the demo (`examples/pingora_demo.rs`, release build) on free loopback ports, a
# Prometheus server (Debian's `prometheus`, its own config and TSDB in a temp dir, scraping the
# demo's admin listener every second), sends a mix of requests for DURATION seconds (under the
# demo's 20 req/s limit, then one burst that trips it), queries the p99 latency
# (`histogram_quantile(0.99, ...)`) and the request rate (`rate(...)`) through Prometheus's HTTP
# API and prints them, then takes a screenshot of the status page with headless Chromium into
# SCREENSHOT (default docs/status-page.png).
#
# Environment: DURATION (30), SCREENSHOT, PROFILE (release; `debug` skips the release build),
# KEEP_WORK=1 keeps the temp dir (logs, TSDB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DURATION=${DURATION:-30}
SCREENSHOT=${SCREENSHOT:-docs/status-page.png}
for tool in prometheus curl python3 chromium; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian: apt-get install prometheus curl python3 chromium)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/obs-prometheus.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -z ${KEEP_WORK:-} ]]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "$1 did not answer within $2 s" >&2
  return 1
}

PROFILE=${PROFILE:-release}
echo "building the demo ($PROFILE)"
if [[ $PROFILE == release ]]; then
  cargo build --release --quiet --example pingora_demo
else
  cargo build --quiet --example pingora_demo
fi
DEMO_BIN=${CARGO_TARGET_DIR:-target}/$PROFILE/examples/pingora_demo

PROXY_PORT=$(free_port) ADMIN_PORT=$(free_port) PROM_PORT=$(free_port)
"$DEMO_BIN" --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" >"$WORK/demo.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/metrics" 30

cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pingora-tower
    static_configs:
      - targets: ["127.0.0.1:$ADMIN_PORT"]
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" 60

echo "load: ${DURATION}s of ~15 req/s (/, /flaky, /slow?ms=20..80, some /status/404), then a burst of 40"
python3 - "$PROXY_PORT" "$DURATION" <<'PY'
import random, sys, threading, time, urllib.request, urllib.error
port, duration = int(sys.argv[1]), float(sys.argv[2])
def get(path):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()
    except urllib.error.HTTPError:
        pass
    except Exception as e:
        print("error", path, e, file=sys.stderr)
end = time.time() + duration
while time.time() < end:
    r = random.random()
    path = "/" if r < 0.6 else "/flaky" if r < 0.8 else f"/slow?ms={random.randint(20, 80)}" if r < 0.95 else "/status/404"
    threading.Thread(target=get, args=(path,)).start()
    time.sleep(1 / 15)
burst = [threading.Thread(target=get, args=("/",)) for _ in range(40)]
for t in burst: t.start()
for t in burst: t.join()
time.sleep(3)  # two more scrapes
PY

query() { # promql
  curl -fsG "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
for s in sorted(r, key=lambda s: sorted(s["metric"].items())):
    labels = ",".join(f"{k}=\"{v}\"" for k, v in sorted(s["metric"].items()))
    value = float(s["value"][1])
    print(f"  {{{labels}}} {value:.4f}")
if not r: print("  (empty)")'
}
W="${DURATION}s"
echo
echo "p99 latency per route, seconds:"
echo "  histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket[$W])))"
query "histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket[$W])))"
echo "p99 per upstream attempt, seconds:"
echo "  histogram_quantile(0.99, sum by (le, server_address) (rate(http_client_request_duration_seconds_bucket[$W])))"
query "histogram_quantile(0.99, sum by (le, server_address) (rate(http_client_request_duration_seconds_bucket[$W])))"
echo "request rate by status, req/s:"
echo "  sum by (http_response_status_code) (rate(http_server_request_duration_seconds_count[$W]))"
query "sum by (http_response_status_code) (rate(http_server_request_duration_seconds_count[$W]))"
echo "retries and rate-limit rejections, total:"
query 'pingora_tower_retries_total'
query 'pingora_tower_rate_limit_rejections_total'
echo "backend health and breaker state:"
query 'pingora_tower_backend_up'
query 'pingora_tower_circuit_breaker_state == 1'

echo
echo "status page screenshot -> $SCREENSHOT"
mkdir -p "$(dirname "$SCREENSHOT")"
timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$WORK/chromium" \
  --screenshot="$SCREENSHOT" --window-size=1200,800 "http://127.0.0.1:$ADMIN_PORT/" >"$WORK/chromium.log" 2>&1
echo "access log lines written by the demo: $(grep -c 'pingora_tower::access' "$WORK/demo.log" || true)"
grep -m1 'pingora_tower::access' "$WORK/demo.log" || true
