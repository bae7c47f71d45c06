#!/usr/bin/env bash
# Soak run: PingoraProxy with the four layers (timeout, rate limit, retry, circuit breaker) in
# front of an upstream that injects faults (resets and truncations mid-body, stalls before the
# head, 503s, bytes that are not HTTP, closes before the head), at a fixed request rate, for
# SOAK_SECS seconds. Every SAMPLE_SECS it samples the proxy process's resident memory
# (/proc/PID/status VmRSS) and open file descriptors (/proc/PID/fd) into a CSV, then prints the
# least-squares slope of each (per minute), an ASCII plot, and the request and fault totals.
# A leak shows as a slope that stays positive over a long run; the first minute includes
# warm-up (pools, allocator arenas), so judge the 10-minute run, not the 60-second one.
#
# Not run in CI. Loopback only; every process it starts is stopped on exit.
#
#   bash benches/soak/run.sh                      # 10 minutes
#   SOAK_SECS=60 bash benches/soak/run.sh         # a quick check that it works
#
# Settings (environment):
#   SOAK_SECS=600        run length in seconds
#   SOAK_RATE=200        requests per second offered (open loop, loadgen)
#   SOAK_CONNECTIONS=16  client connections
#   SAMPLE_SECS=10       seconds between samples
#   SOAK_WARMUP_SECS=60  samples before this are left out of the slopes (pools and allocator
#                        arenas fill up first); 10 when the run is shorter than 3 minutes
#   SOAK_TIMEOUT_MS=500  the proxy's timeout layer (a stall is cut after this)
#   SOAK_STALL_MS=2000   how long a stalling upstream holds a connection
#   SOAK_FAULTS="--reset 0.02 --truncate 0.02 --stall 0.02 --status503 0.03 --garbage 0.01 --close 0.02"
#   SOAK_PROFILE=release cargo profile of the binaries (release or dev)
#   SOAK_OUT=DIR         where the CSV and logs go (default target/soak/<date>)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

SOAK_SECS=${SOAK_SECS:-600}
SOAK_RATE=${SOAK_RATE:-200}
SOAK_CONNECTIONS=${SOAK_CONNECTIONS:-16}
SAMPLE_SECS=${SAMPLE_SECS:-10}
SOAK_TIMEOUT_MS=${SOAK_TIMEOUT_MS:-500}
SOAK_STALL_MS=${SOAK_STALL_MS:-2000}
SOAK_FAULTS=${SOAK_FAULTS:---reset 0.02 --truncate 0.02 --stall 0.02 --status503 0.03 --garbage 0.01 --close 0.02}
SOAK_PROFILE=${SOAK_PROFILE:-release}
SOAK_OUT=${SOAK_OUT:-$CARGO_TARGET_DIR/soak/$(date +%Y%m%d-%H%M%S)}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ((SOAK_SECS < 180)); then
  SOAK_WARMUP_SECS=${SOAK_WARMUP_SECS:-10}
else
  SOAK_WARMUP_SECS=${SOAK_WARMUP_SECS:-60}
fi

for v in SOAK_SECS SOAK_RATE SOAK_CONNECTIONS SAMPLE_SECS SOAK_TIMEOUT_MS SOAK_STALL_MS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: expected a positive integer"
done
case $SOAK_PROFILE in
  release) BIN=$CARGO_TARGET_DIR/release; PROFILE_FLAG=--release ;;
  dev) BIN=$CARGO_TARGET_DIR/debug; PROFILE_FLAG= ;;
  *) die "SOAK_PROFILE=$SOAK_PROFILE: expected release or dev" ;;
esac
mkdir -p "$SOAK_OUT"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT

log "building (profile $SOAK_PROFILE, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
# shellcheck disable=SC2086 # PROFILE_FLAG is empty or one flag
(cd "$ROOT" && cargo build $PROFILE_FLAG --quiet -p pingora-tower-proxy-bench \
  --bin fault-upstream --bin soak-proxy --bin loadgen)

# Starts "$@" (after the name $1) with stdout to $1.log in SOAK_OUT and waits (bounded) for its
# `listening on ADDR` line. Sets STARTED_PID and STARTED_ADDR.
start() {
  local name=$1 i
  shift
  "$@" >"$SOAK_OUT/$name.log" 2>"$SOAK_OUT/$name.err" &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  for ((i = 0; i < 300; i++)); do
    STARTED_ADDR=$(sed -n 's/^listening on //p' "$SOAK_OUT/$name.log" 2>/dev/null | head -n1)
    [[ -n $STARTED_ADDR ]] && return 0
    kill -0 "$STARTED_PID" 2>/dev/null || die "$name exited: $(cat "$SOAK_OUT/$name.err")"
    sleep 0.05
  done
  die "$name did not start within 15 s"
}

# shellcheck disable=SC2086 # SOAK_FAULTS is a list of flags
start upstream "$BIN/fault-upstream" --listen 127.0.0.1:0 --stall-ms "$SOAK_STALL_MS" $SOAK_FAULTS
UP_ADDR=$STARTED_ADDR
UP_PID=$STARTED_PID
start proxy "$BIN/soak-proxy" --listen 127.0.0.1:0 --upstream "http://$UP_ADDR" \
  --timeout-ms "$SOAK_TIMEOUT_MS"
PROXY_ADDR=$STARTED_ADDR
PROXY_PID=$STARTED_PID
log "upstream $UP_ADDR (pid $UP_PID), proxy $PROXY_ADDR (pid $PROXY_PID)"
log "soaking for ${SOAK_SECS}s at ${SOAK_RATE} req/s over $SOAK_CONNECTIONS connections; output in $SOAK_OUT"

# The load: loadgen runs at most 60 s at a time, so it runs in back-to-back slices.
START=$(date +%s)
END=$((START + SOAK_SECS))
(
  while :; do
    now=$(date +%s)
    left=$((END - now))
    ((left > 0)) || break
    slice=$((left < 60 ? left : 60))
    "$BIN/loadgen" --url "http://$PROXY_ADDR/soak" --connections "$SOAK_CONNECTIONS" \
      --rate "$SOAK_RATE" --duration "$slice" || echo "loadgen failed: $?"
  done
) >"$SOAK_OUT/loadgen.log" 2>&1 &
LOAD_PID=$!
PIDS+=("$LOAD_PID")

CSV=$SOAK_OUT/samples.csv
echo "t_s,rss_kib,fds,phase" >"$CSV"
# One row: seconds since the start, VmRSS, open fds, and `load` or `after` (load stopped).
sample() {
  local t=$1 phase=$2 rss fds
  kill -0 "$PROXY_PID" 2>/dev/null || die "the proxy died (see $SOAK_OUT/proxy.err)"
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status")
  fds=$(find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  echo "$t,$rss,$fds,$phase" >>"$CSV"
  log "t=${t}s rss=${rss} KiB fds=$fds ($phase)"
}
next=0
while :; do
  now=$(date +%s)
  if ((now - START >= next)); then
    sample $((now - START)) load
    next=$((next + SAMPLE_SECS))
  fi
  ((now >= END)) && break
  sleep 0.2
done
wait "$LOAD_PID" || true
# Once the load stopped and the proxy had a moment to close idle connections.
sleep 1
sample $(($(date +%s) - START)) after
kill -TERM "$UP_PID" 2>/dev/null || true
wait "$UP_PID" 2>/dev/null || true

# The summary.
TOTALS=$(awk '
  /^ok=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); s[kv[1]] += kv[2] } n++ }
  END { printf "loadgen slices=%d ok=%d errors=%d unsent=%d", n, s["ok"], s["errors"], s["unsent"] }
' "$SOAK_OUT/loadgen.log")
FAULTS=$(grep -v '^listening on' "$SOAK_OUT/upstream.log" | tail -n1)

awk -F, -v totals="$TOTALS" -v faults="$FAULTS" -v secs="$SOAK_SECS" -v rate="$SOAK_RATE" \
  -v warmup="$SOAK_WARMUP_SECS" '
  NR == 1 { next }
  {
    n++; t[n] = $1; r[n] = $2; f[n] = $3; p[n] = $4
    if (n == 1 || $2 < rmin) rmin = $2; if (n == 1 || $2 > rmax) rmax = $2
    if (n == 1 || $3 < fmin) fmin = $3; if (n == 1 || $3 > fmax) fmax = $3
  }
  # Least squares over the samples under load from the end of the warm-up on.
  function slope(y,    i, k, x, sx, sy, sxx, sxy, d) {
    for (i = 1; i <= n; i++) {
      if (p[i] != "load" || t[i] < warmup) continue
      k++; x = t[i] / 60; sx += x; sy += y[i]; sxx += x * x; sxy += x * y[i]
    }
    d = k * sxx - sx * sx
    return d == 0 ? 0 : (k * sxy - sx * sy) / d
  }
  function bar(v, lo, hi,    w, s, i) {
    w = hi > lo ? int((v - lo) * 40 / (hi - lo) + 0.5) : 0
    s = "|"
    for (i = 0; i < w; i++) s = s "#"
    return sprintf("%-41s", s)
  }
  END {
    printf "\n== soak summary: %ss at %s req/s ==\n", secs, rate
    print totals
    print "upstream answers: " faults
    printf "samples=%d  rss KiB first=%d last=%d min=%d max=%d  fds first=%d last=%d min=%d max=%d\n",
      n, r[1], r[n], rmin, rmax, f[1], f[n], fmin, fmax
    printf "slope rss=%.1f KiB/min  fds=%.2f /min  (least squares, samples under load from t=%ds)\n",
      slope(r), slope(f), warmup
    printf "after the load: rss=%d KiB fds=%d (before it: fds=%d)\n", r[n], f[n], f[1]
    printf "\n  t_s   rss_kib  %-41s fds  (bars scaled min..max)\n", "rss"
    for (i = 1; i <= n; i++)
      printf "%5d %9d  %s %4d %s %s\n", t[i], r[i], bar(r[i], rmin, rmax), f[i], bar(f[i], fmin, fmax), p[i]
  }
' "$CSV" | tee "$SOAK_OUT/summary.txt"
# A panic in a request task does not stop the proxy, so it would not show in the samples.
panics=$(grep -c "panicked" "$SOAK_OUT/proxy.err" 2>/dev/null || true)
echo "proxy panics: ${panics:-0} (see $SOAK_OUT/proxy.err)" | tee -a "$SOAK_OUT/summary.txt"
log "CSV: $CSV"
