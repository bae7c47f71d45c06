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
# The redis-server of the `+redis` contenders (started by run.sh when one is listed).
REDIS_PORT=${REDIS_PORT:-19379}
# Cargo features of the bench binaries (run.sh adds `redis` for the `+redis` contenders).
PB_FEATURES=${PB_FEATURES:-}

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
  (cd "$PB_ROOT" && cargo build --release --quiet -p pingora-tower-proxy-bench --bins \
    ${PB_FEATURES:+--features "$PB_FEATURES"})
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
# when process $2 died. $4: curl's limit per attempt in seconds (default 2). $5: `https` for a
# TLS contender (checked against the bench's own CA).
pb_wait_ready() {
  local port=$1 pid=$2 secs=${3:-15} per_try=${4:-2} scheme=${5:-http} i
  local tls=()
  [[ $scheme == https ]] && tls=(--cacert "$PB_WORK/tls/cert.pem")
  for ((i = 0; i < secs * 20; i++)); do
    if curl -sf -o /dev/null --max-time "$per_try" "${tls[@]}" "$scheme://127.0.0.1:$port/"; then
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

# Starts a redis-server on REDIS_PORT (CPU LOAD_CPU, nothing saved), for the `+redis` contenders.
pb_start_redis() {
  local i
  pb_port_free "$REDIS_PORT" || pb_die "port $REDIS_PORT is in use"
  taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$PB_WORK" >"$PB_WORK/redis.log" 2>&1 &
  PB_PIDS+=("$!")
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  pb_die "redis-server did not start"
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
  # `pingora-tower…@th2`: two threads of its own accepting from one shared socket;
  # `…@th2-reuseport`: one SO_REUSEPORT socket per thread (`ProxyBuilder::reuse_port`).
  if [[ $name == *@th2 ]]; then
    echo "$(pb_contender_cmd "${name%@th2}" "$port") --threads 2 --workers 0"
    return
  fi
  if [[ $name == *@th2-reuseport ]]; then
    echo "$(pb_contender_cmd "${name%@th2-reuseport}" "$port") --threads 2 --workers 0 --reuse-port yes"
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
    # The rate limit alone, in-process or in Redis (exact, or leases of 100); built with `redis`.
    pingora-tower+rl) echo "$PB_BIN/pingora-tower-proxy --layers rate-limit --listen 127.0.0.1:$port --upstream http://127.0.0.1:$UP_PORT" ;;
    pingora-tower+redis) echo "$PB_BIN/pingora-tower-proxy --layers redis --redis redis://127.0.0.1:$REDIS_PORT/ --listen 127.0.0.1:$port --upstream http://127.0.0.1:$UP_PORT" ;;
    pingora-tower+redis-lease) echo "$PB_BIN/pingora-tower-proxy --layers redis-lease --redis redis://127.0.0.1:$REDIS_PORT/ --listen 127.0.0.1:$port --upstream http://127.0.0.1:$UP_PORT" ;;
    pingora-tower+4+obs) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs metrics" ;;
    pingora-tower+4+obs-made-ids) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs metrics-made-ids" ;;
    pingora-tower+4+obs-log) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs log --access-log $PB_WORK/access.log" ;;
    pingora-tower+4+obs-log-buffered) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs log-buffered --access-log $PB_WORK/access.log" ;;
    # The same access log through tracing_subscriber::fmt, for comparison with `AccessLog`.
    pingora-tower+4+obs-log-layer) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs log-layer --access-log $PB_WORK/access.log" ;;
    pingora-tower+4+obs-log-fmt) echo "$(pb_contender_cmd pingora-tower+4 "$port") --obs log-fmt --access-log $PB_WORK/access.log" ;;
    pingora-tower-nofwd) echo "$(pb_contender_cmd pingora-tower "$port") --forwarded-headers no" ;;
    pingora-tower+4-nofwd) echo "$(pb_contender_cmd pingora-tower+4 "$port") --forwarded-headers no" ;;
    servetower-axum) echo "$PB_BIN/servetower-axum --listen 127.0.0.1:$port" ;;
    axum-hyper) echo "$PB_BIN/axum-hyper --listen 127.0.0.1:$port" ;;
    nginx) echo "nginx -p $PB_WORK/nginx -c $PB_WORK/nginx/nginx.conf -e $PB_WORK/nginx/error.log" ;;
    haproxy) echo "haproxy -db -f $PB_WORK/haproxy.cfg" ;;
    # TLS termination (`pb_write_tls` makes the certificate; loadgen and wrk keep connections
    # alive, so the handshake is amortised).
    pingora-plain-tls) echo "$(pb_contender_cmd pingora-plain "$port") $(pb_tls_flags)" ;;
    pingora-tower-tls) echo "$(pb_contender_cmd pingora-tower "$port") $(pb_tls_flags)" ;;
    nginx-tls) echo "nginx -p $PB_WORK/nginx -c $PB_WORK/nginx/nginx-tls.conf -e $PB_WORK/nginx/error.log" ;;
    haproxy-tls) echo "haproxy -db -f $PB_WORK/haproxy-tls.cfg" ;;
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

# The URL scheme of contender $1: `https` for the `-tls` ones.
pb_scheme() { if [[ $1 == *-tls ]]; then echo https; else echo http; fi; }

pb_tls_flags() { echo "--tls-cert $PB_WORK/tls/cert.pem --tls-key $PB_WORK/tls/key.pem"; }

# A self-signed ECDSA P-256 certificate for 127.0.0.1 (made per run, never kept; not a CA, which
# rustls refuses as a server certificate), and the nginx
# and HAProxy configurations that terminate TLS with it on port $1 (same upstream settings as
# their plain configurations). Run after pb_write_configs.
pb_write_tls() {
  local port=$1
  mkdir -p "$PB_WORK/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$PB_WORK/tls/key.pem" -out "$PB_WORK/tls/cert.pem" 2>/dev/null
  cat "$PB_WORK/tls/cert.pem" "$PB_WORK/tls/key.pem" >"$PB_WORK/tls/haproxy.pem"
  sed -e "s|listen 127.0.0.1:$port;|listen 127.0.0.1:$port ssl;\n        ssl_certificate $PB_WORK/tls/cert.pem;\n        ssl_certificate_key $PB_WORK/tls/key.pem;\n        ssl_protocols TLSv1.2 TLSv1.3;|" \
    "$PB_WORK/nginx/nginx.conf" >"$PB_WORK/nginx/nginx-tls.conf"
  sed -e "s|bind 127.0.0.1:$port|bind 127.0.0.1:$port ssl crt $PB_WORK/tls/haproxy.pem alpn http/1.1|" \
    "$PB_WORK/haproxy.cfg" >"$PB_WORK/haproxy-tls.cfg"
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
