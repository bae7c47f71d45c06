#!/usr/bin/env bash
# The side-by-side proxy bench (issue 5): `bash benches/proxy/run.sh`.
#
# Installs wrk, nginx, haproxy (Debian packages) when missing, builds the release binaries of
# `pingora-tower-proxy-bench`, starts `bench-upstream` (1 KiB body), then for each round runs every
# contender in turn (the order rotates per round), pinned to CPU $PROXY_CPU with the load
# generator and the upstream on CPU $LOAD_CPU, and measures:
#   (a) CPU µs per request of the contender process at a fixed offered rate (open-loop loadgen,
#       $RATE req/s over $CONNS keep-alive connections for $CPU_SECS s; schedstat before/after),
#   (b) saturated requests/s (wrk -t1 -c$WRK_CONNS -d${WRK_SECS}s), context only,
#   (c) unloaded p50 latency (1 connection, $LAT_RATE req/s for $LAT_SECS s), shown as added
#       over `direct` in the same round.
# Writes benches/proxy/results/proxy.csv (every round) and proxy.md (medians, ratios to
# pingora-plain and nginx), prints the table, and draws proxy.png when matplotlib is there.
#
# Environment: ROUNDS (3), RATE (3000), CONNS (16), CPU_SECS (6), WRK_SECS (5), WRK_CONNS (32),
# LAT_RATE (500), LAT_SECS (4), CONTENDERS (space separated; the TLS row is
# `pingora-plain-tls pingora-tower-tls nginx-tls haproxy-tls`, best with REPORT=proxy-tls;
# `pingora-server` is the plain proxy
# on Pingora's own Server; the what-ifs `pingora-plain+fwd`, `pingora-plain+fwd-lean`,
# `pingora-plain+timeouts` are not in the default list, nor are the thread layouts
# `pingora-tower+4@th2` (two threads, one shared socket) and `pingora-tower+4@th2-reuseport`
# (one SO_REUSEPORT socket per thread), nor the rate limit alone in-process or in Redis,
# `pingora-tower+rl`, `pingora-tower+redis`, `pingora-tower+redis-lease`, which start a
# redis-server on REDIS_PORT (19379)), CARGO_TARGET_DIR, PROXY_CPU (1),
# LOAD_CPU (0), FRESH (`full` or `resumed`: a new connection per request, with full or resumed
# TLS handshakes, loadgen's `--fresh`; wrk then sends `Connection: close`), KEEP_WORK=1 keeps
# the temp dir with the logs and configs. Every load run lasts
# at most 10 s. REPORT (proxy): the name of the .csv/.md written (the plot is drawn for `proxy`
# only).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
RATE=${RATE:-3000}
CONNS=${CONNS:-16}
CPU_SECS=${CPU_SECS:-6}
WRK_SECS=${WRK_SECS:-5}
WRK_CONNS=${WRK_CONNS:-32}
LAT_RATE=${LAT_RATE:-500}
LAT_SECS=${LAT_SECS:-4}
CONTENDERS=${CONTENDERS:-direct pingora-plain pingora-server pingora-tower pingora-tower+4 nginx haproxy servetower-axum axum-hyper}
PORT=${PORT:-19001}
RESULTS=$PB_HERE/results
REPORT=${REPORT:-proxy}
FRESH=${FRESH:-}
FRESH_ARGS=()
WRK_ARGS=()
if [[ -n $FRESH ]]; then
  FRESH_ARGS=(--fresh "$FRESH")
  WRK_ARGS=(-H "Connection: close")
fi

for secs in "$CPU_SECS" "$WRK_SECS" "$LAT_SECS"; do
  ((secs >= 1 && secs <= 10)) || pb_die "every run must last 1..10 s (got $secs)"
done
(($(nproc) >= 2)) || pb_die "needs 2 CPUs (contender on one, load on the other)"

pb_install wrk:wrk nginx:nginx haproxy:haproxy curl:curl taskset:util-linux openssl:openssl
# The `+redis` contenders need the `redis` feature (every binary of the run is then built with
# it, so the contenders stay comparable) and a redis-server.
if [[ $CONTENDERS == *redis* ]]; then
  pb_install redis-server:redis-server
  PB_FEATURES=redis
fi
pb_build

PB_WORK=$(mktemp -d /tmp/proxy-bench.XXXXXX)
trap pb_cleanup EXIT
trap 'exit 130' INT TERM
pb_port_free "$PORT" || pb_die "port $PORT is in use"
pb_write_configs "$PORT"
pb_write_tls "$PORT"
mkdir -p "$RESULTS"
CSV=$RESULTS/$REPORT.csv
RAW=$PB_WORK/raw.log

pb_start_upstream
if [[ $CONTENDERS == *redis* ]]; then pb_start_redis; fi
pb_log "upstream pid $UP_PID on 127.0.0.1:$UP_PORT (CPU $LOAD_CPU); work dir $PB_WORK"

echo "round,contender,offered_rps,achieved_rps,requests,errors,cpu_us_per_req,loaded_p50_us,loaded_p99_us,wrk_rps,wrk_errors,p50_us,p99_us" >"$CSV"

# `--cacert` is used by https URLs only (the TLS contenders).
loadgen() { taskset -c "$LOAD_CPU" "$PB_BIN/loadgen" --cacert "$PB_WORK/tls/cert.pem" "${FRESH_ARGS[@]}" "$@"; }

# Measures contender $1 (pid $2 listening on $3) in round $4; appends one CSV row.
measure() {
  local name=$1 pid=$2 port=$3 round=$4 url
  url="$(pb_scheme "$name")://127.0.0.1:$3/"
  local out before after ok errors unsent requests cpu_us wrk_out wrk_rps wrk_err lat
  # Warm-up: connections, the upstream pool, caches.
  loadgen --url "$url" --rate "$RATE" --duration 1 --connections "$CONNS" >/dev/null
  before=$(pb_cpu_ns "$pid")
  out=$(loadgen --url "$url" --rate "$RATE" --duration "$CPU_SECS" --connections "$CONNS")
  after=$(pb_cpu_ns "$pid")
  echo "$round $name fixed-rate: $out" >>"$RAW"
  ok=$(pb_field ok "$out")
  errors=$(pb_field errors "$out")
  unsent=$(pb_field unsent "$out")
  requests=$((ok + errors))
  ((requests > 0)) || pb_die "$name: no request answered"
  cpu_us=$(awk -v d=$((after - before)) -v n="$requests" 'BEGIN { printf "%.2f", d / 1000 / n }')

  lat=$(loadgen --url "$url" --rate "$LAT_RATE" --duration "$LAT_SECS" --connections 1)
  echo "$round $name unloaded: $lat" >>"$RAW"

  wrk_out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNS" -d"${WRK_SECS}s" --timeout 2s "${WRK_ARGS[@]}" "$url")
  echo "$round $name wrk: $(tr '\n' ' ' <<<"$wrk_out")" >>"$RAW"
  wrk_rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$wrk_out")
  wrk_err=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$wrk_out")

  echo "$round,$name,$RATE,$(pb_field achieved_rps "$out"),$requests,$((errors + unsent)),$cpu_us,$(pb_field p50_us "$out"),$(pb_field p99_us "$out"),$wrk_rps,$wrk_err,$(pb_field p50_us "$lat"),$(pb_field p99_us "$lat")" >>"$CSV"
  pb_log "  $name: ${cpu_us} µs CPU/req at $(pb_field achieved_rps "$out") req/s (errors $((errors + unsent))), wrk ${wrk_rps} req/s, unloaded p50 $(pb_field p50_us "$lat") µs"
}

read -r -a LIST <<<"$CONTENDERS"
for name in "${LIST[@]}"; do # unknown names fail here, not mid-run
  [[ $name == direct ]] || pb_contender_cmd "$name" "$PORT" >/dev/null
done
for ((round = 1; round <= ROUNDS; round++)); do
  pb_log "round $round/$ROUNDS"
  # Rotate the order so no contender always runs first or last.
  for ((k = 0; k < ${#LIST[@]}; k++)); do
    name=${LIST[$(((k + round - 1) % ${#LIST[@]}))]}
    if [[ $name == direct ]]; then
      measure direct "$UP_PID" "$UP_PORT" "$round"
      continue
    fi
    read -r -a cmd <<<"$(pb_contender_cmd "$name" "$PORT")"
    taskset -c "$PROXY_CPU" "${cmd[@]}" >"$PB_WORK/$name.log" 2>&1 &
    pid=$!
    PB_PIDS+=("$pid")
    pb_wait_ready "$PORT" "$pid" 15 2 "$(pb_scheme "$name")"
    measure "$name" "$pid" "$PORT" "$round"
    pb_stop "$pid"
    pb_forget "$pid"
  done
done

python3 "$PB_HERE/summarize.py" "$CSV" "$RESULTS/$REPORT.md" \
  "rate $RATE req/s over $CONNS connections${FRESH:+ (a new connection per request, $FRESH TLS handshakes)} for $CPU_SECS s; wrk -t1 -c$WRK_CONNS -d${WRK_SECS}s; unloaded: 1 connection at $LAT_RATE req/s for $LAT_SECS s; $ROUNDS rounds"
if [[ $REPORT != proxy ]]; then
  :
elif python3 -c 'import matplotlib' 2>/dev/null; then
  python3 "$PB_HERE/plot.py" "$RESULTS"
else
  pb_log "matplotlib missing (pip install matplotlib): no plot drawn"
fi
if [[ -n ${KEEP_WORK:-} ]]; then pb_log "logs and configs kept in $PB_WORK"; fi
