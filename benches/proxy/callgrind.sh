#!/usr/bin/env bash
# Instructions per proxied request (issue 5): `bash benches/proxy/callgrind.sh`.
#
# Runs each variant (pingora-plain, pingora-tower with no layers, pingora-tower with the four
# layers) under `valgrind --tool=callgrind --trace-children=no` twice: once answering N1 and
# once N2 sequential keep-alive requests (loadgen --count, one connection), everything else
# equal. Instructions per request = (total(N2) - total(N1)) / (N2 - N1), so start-up, the
# readiness probe, the first connection and shutdown cancel out.
# Writes benches/proxy/results/callgrind.csv and callgrind.md (totals, ratios to
# pingora-plain, where the instructions of a request go, per function, and the per-function
# difference of each variant against pingora-plain).
#
# Environment: N1 (2000), N2 (6000), VARIANTS (space separated; the default compares
# pingora-plain and pingora-tower with and without the X-Forwarded-* headers
# (`pingora-plain+fwd`, `pingora-tower-nofwd`, `pingora-tower+4-nofwd`); also `nginx` (run without its
# master process), `haproxy`, `servetower-axum`, `axum-hyper`, `pingora-server`: the plain proxy
# on Pingora's own Server, the what-ifs `pingora-plain+fwd-lean`,
# `pingora-plain+timeouts`, the `obs` layer over the four (`pingora-tower+4+obs`: metrics, no
# subscriber; `pingora-tower+4+obs-made-ids`: and request ids made for requests without one;
# `pingora-tower+4+obs-log`: and the access log written to a file by the layer itself
# (`ObsLayer::access_log`); `pingora-tower+4+obs-log-buffered`: the same held and written
# 32 KiB at a time (`AccessLog::buffered`); `pingora-tower+4+obs-log-layer`: the same through
# `AccessLog`'s tracing layer;
# `pingora-tower+4+obs-log-fmt`: the same log through `tracing_subscriber::fmt`), and any Rust
# variant with `@ct` for a current-thread runtime),
# REPORT (callgrind: the name of the .csv/.md written), CARGO_TARGET_DIR, KEEP_WORK=1 keeps the
# callgrind.out files in the temp dir.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N1=${N1:-2000}
N2=${N2:-6000}
VARIANTS=${VARIANTS:-pingora-plain pingora-plain+fwd pingora-tower pingora-tower+4 pingora-tower-nofwd pingora-tower+4-nofwd}
PORT=${PORT:-19011}
RESULTS=$PB_HERE/results
REPORT=${REPORT:-callgrind}
((N2 > N1 && N1 > 0)) || pb_die "need 0 < N1 < N2"

pb_install valgrind:valgrind curl:curl taskset:util-linux
pb_build

PB_WORK=$(mktemp -d /tmp/proxy-callgrind.XXXXXX)
trap pb_cleanup EXIT
trap 'exit 130' INT TERM
pb_port_free "$PORT" || pb_die "port $PORT is in use"
pb_write_configs "$PORT" single
mkdir -p "$RESULTS"
pb_start_upstream

CSV=$RESULTS/$REPORT.csv
echo "contender,n1,total1,n2,total2,instructions_per_request" >"$CSV"
FILES=()
read -r -a LIST <<<"$VARIANTS"
for name in "${LIST[@]}"; do # unknown names fail here, not mid-run
  pb_contender_cmd "$name" "$PORT" >/dev/null
done
for name in "${LIST[@]}"; do
  totals=()
  for n in "$N1" "$N2"; do
    out=$PB_WORK/callgrind.$name.$n.out
    read -r -a cmd <<<"$(pb_contender_cmd "$name" "$PORT")"
    taskset -c "$PROXY_CPU" valgrind --tool=callgrind --trace-children=no \
      --callgrind-out-file="$out" "${cmd[@]}" >"$PB_WORK/$name.$n.log" 2>&1 &
    pid=$!
    PB_PIDS+=("$pid")
    pb_wait_ready "$PORT" "$pid" 120 20
    # Bounded: a request that takes 10 s (2 s is loadgen's limit) is an error, not a hang.
    result=$(taskset -c "$LOAD_CPU" "$PB_BIN/loadgen" --url "http://127.0.0.1:$PORT/" \
      --count "$n" --connections 1)
    [[ $(pb_field errors "$result") == 0 ]] || pb_die "$name: errors under callgrind: $result"
    pb_stop "$pid" 120
    pb_forget "$pid"
    [[ -s $out ]] || pb_die "$name: no callgrind output (see $PB_WORK/$name.$n.log)"
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
    totals+=("$total")
    pb_log "$name: $n requests, $total instructions ($(pb_field achieved_rps "$result") req/s under callgrind)"
  done
  per=$(((totals[1] - totals[0]) / (N2 - N1)))
  echo "$name,$N1,${totals[0]},$N2,${totals[1]},$per" >>"$CSV"
  pb_log "$name: $per instructions per request"
  FILES+=("$name=$PB_WORK/callgrind.$name.$N1.out,$PB_WORK/callgrind.$name.$N2.out")
done

python3 "$PB_HERE/cgreport.py" "$CSV" "$RESULTS/$REPORT.md" "${FILES[@]}"
if [[ -n ${KEEP_WORK:-} ]]; then pb_log "callgrind.out files kept in $PB_WORK"; fi
