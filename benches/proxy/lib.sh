# Helpers shared by run.sh and callgrind.sh (sourced, not run). Bash, `set -euo pipefail` is the
# caller's.

# The repository root and the release binaries.
PB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PB_ROOT=$(cd "$PB_HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PB_ROOT/target}
PB_BIN=$CARGO_TARGET_DIR/release

# CPU layout: the contender alone on one CPU, load generator + upstream on the other.
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

# Ports (loopback only).
UP_PORT=${UP_PORT:-19000}

# Every PID we started; the EXIT trap stops them.
PB_PIDS=()
PB_WORK=""

pb_log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
pb_die() { pb_log "error: $*"; exit 1; }

# Installs the Debian packages given as "command:package" pairs whose command is missing.
pb_install() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    pb_log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

pb_build() {
  pb_log "building the release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$PB_ROOT" && cargo build --release --quiet -p pingora-tower-proxy-bench --bins)
}

# Stops one PID: SIGTERM, up to $2 seconds (default 10), then SIGKILL. Only PIDs we started
# are passed here.
pb_stop() {
  local pid=$1 secs=${2:-10} i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    pb_log "pid $pid ignored SIGTERM, killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

pb_cleanup() {
  local pid
  for pid in "${PB_PIDS[@]}"; do
    pb_stop "$pid"
  done
  PB_PIDS=()
  if [[ -n $PB_WORK && -d $PB_WORK && -z ${KEEP_WORK:-} ]]; then
    rm -rf "$PB_WORK"
  fi
}

# Forgets a PID once stopped.
pb_forget() {
  local pid=$1 i
  for i in "${!PB_PIDS[@]}"; do
    [[ ${PB_PIDS[$i]} == "$pid" ]] && unset 'PB_PIDS[i]'
  done
  PB_PIDS=("${PB_PIDS[@]}")
}

pb_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits (bounded: $3 seconds, default 15) until http://127.0.0.1:$1/ answers 200, failing early
# when process $2 died. $4: curl's limit per attempt in seconds (default 2).
pb_wait_ready() {
  local port=$1 pid=$2 secs=${3:-15} per_try=${4:-2} i
  for ((i = 0; i < secs * 20; i++)); do
    if curl -sf -o /dev/null --max-time "$per_try" "http://127.0.0.1:$port/"; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || pb_die "pid $pid (port $port) exited before it was ready"
    sleep 0.05
  done
  pb_die "port $port not ready after ${secs}s"
}

# Starts the upstream pinned to LOAD_CPU; sets UP_PID.
pb_start_upstream() {
  pb_port_free "$UP_PORT" || pb_die "port $UP_PORT is in use"
  taskset -c "$LOAD_CPU" "$PB_BIN/bench-upstream" --listen "127.0.0.1:$UP_PORT" \
    >"$PB_WORK/upstream.log" 2>&1 &
  UP_PID=$!
  PB_PIDS+=("$UP_PID")
  pb_wait_ready "$UP_PORT" "$UP_PID"
}

# Reads `key=value` from a loadgen output line.
pb_field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }

# The command line of a contender listening on port $2 (the proxy contenders send to UP_PORT).
# A Rust contender's name may end in `@ct`: the same binary on a current-thread runtime
# (`--workers 0`) instead of a multi-thread runtime with one worker; a `pingora-tower…` name
# may end in `@th`: the proxy on one thread of its own (`--threads 1`).
pb_contender_cmd() {
  local name=$1 port=$2
  if [[ $name == *@ct ]]; then
    echo "$(pb_contender_cmd "${name%@ct}" "$port") --workers 0"
    return
  fi
  # `pingora-tower…@th`: the proxy on one thread of its own (`ProxyBuilder::threads(1)`).
  if [[ $name == *@th ]]; then
    echo "$(pb_contender_cmd "${name%@th}" "$port") --threads 1 --workers 0"
    return
  fi
  case $name in
    pingora-plain) echo "$PB_BIN/pingora-plain --listen 127.0.0.1:$port --upstream 127.0.0.1:$UP_PORT" ;;
    pingora-plain+fwd) echo "$PB_BIN/pingora-plain --forwarded-headers yes --listen 127.0.0.1:$port --upstream 127.0.0.1:$UP_PORT" ;;
    pingora-plain+fwd-lean) echo "$PB_BIN/pingora-plain --forwarded-headers lean --listen 127.0.0.1:$port --upstream 127.0.0.1:$UP_PORT" ;;
    pingora-plain+timeouts) echo "$PB_BIN/pingora-plain --peer-timeouts yes --listen 127.0.0.1:$port --upstream 127.0.0.1:$UP_PORT" ;;
    pingora-server) echo "$PB_BIN/pingora-plain --host server --listen 127.0.0.1:$port --upstream 127.0.0.1:$UP_PORT" ;;
    pingora-tower) echo "$PB_BIN/pingora-tower-proxy --layers none --listen 127.0.0.1:$port --upstream http://127.0.0.1:$UP_PORT" ;;
    pingora-tower+4) echo "$PB_BIN/pingora-tower-proxy --layers four --listen 127.0.0.1:$port --upstream http://127.0.0.1:$UP_PORT" ;;
    pingora-tower+4+obs) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs metrics" ;;
    pingora-tower+4+obs-log) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs log --access-log $PB_WORK/access.log" ;;
    pingora-tower-nofwd) echo "$(pb_contender_cmd pingora-tower "$port") --forwarded-headers no" ;;
    pingora-tower+4-nofwd) echo "$(pb_contender_cmd pingora-tower+4 "$port") --forwarded-headers no" ;;
    servetower-axum) echo "$PB_BIN/servetower-axum --listen 127.0.0.1:$port" ;;
    axum-hyper) echo "$PB_BIN/axum-hyper --listen 127.0.0.1:$port" ;;
    nginx) echo "nginx -p $PB_WORK/nginx -c $PB_WORK/nginx/nginx.conf -e $PB_WORK/nginx/error.log" ;;
    haproxy) echo "haproxy -db -f $PB_WORK/haproxy.cfg" ;;
    *) pb_die "unknown contender $name" ;;
  esac
}

# Writes the nginx and haproxy configurations for contender port $1 into PB_WORK. With $2 =
# single, nginx runs without its master process (one process, for valgrind).
pb_write_configs() {
  local port=$1 master=on
  [[ ${2:-} == single ]] && master=off
  mkdir -p "$PB_WORK/nginx"
  cat >"$PB_WORK/nginx/nginx.conf" <<CONF
daemon off;
master_process $master;
worker_processes 1;
pid $PB_WORK/nginx/nginx.pid;
error_log $PB_WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $PB_WORK/nginx/body;
    proxy_temp_path $PB_WORK/nginx/proxy;
    fastcgi_temp_path $PB_WORK/nginx/fastcgi;
    uwsgi_temp_path $PB_WORK/nginx/uwsgi;
    scgi_temp_path $PB_WORK/nginx/scgi;
    keepalive_requests 1000000;
    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
  cat >"$PB_WORK/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:$port
    default_backend upstream
backend upstream
    server up 127.0.0.1:$UP_PORT
CONF
}

# Every PID of the process tree rooted at $1 (nginx's master and its worker).
pb_tree() {
  local pid=$1 child
  echo "$pid"
  # shellcheck disable=SC2013 # the files hold space-separated PIDs
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    pb_tree "$child"
  done
}

# Nanoseconds on CPU so far of every thread of the process tree rooted at $1
# (first field of /proc/PID/task/TID/schedstat).
pb_cpu_ns() {
  local total=0 pid f ns rest
  for pid in $(pb_tree "$1"); do
    for f in /proc/"$pid"/task/*/schedstat; do
      { read -r ns rest <"$f"; } 2>/dev/null && total=$((total + ns))
    done
  done
  echo "$total"
}
