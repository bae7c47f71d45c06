#!/usr/bin/env bash
# Starts a local three-node Redis Cluster on free ports, runs the Redis-backed rate limit's
# cluster test against it (two proxies sharing one limit; 60 keys spread over the three nodes),
# and stops everything. Not part of CI. Needs redis-server, redis-cli and python3.
#
#   benches/redis/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Two free ports per node: the client port and the cluster bus port.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ports=()
for _ in 1 2 3; do
  port=$(free_port)
  bus=$(free_port)
  mkdir -p "$dir/$port"
  redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
    --save '' --appendonly no --dir "$dir/$port" >"$dir/$port/log" 2>&1 &
  pids+=("$!")
  ports+=("$port")
done
for port in "${ports[@]}"; do
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
done

nodes=()
for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes
for _ in $(seq 100); do
  redis-cli -p "${ports[0]}" cluster info | grep -q 'cluster_state:ok' && break
  sleep 0.2
done
redis-cli -p "${ports[0]}" cluster info | grep -E 'cluster_state|cluster_known_nodes|cluster_slots_assigned'

urls=()
for port in "${ports[@]}"; do urls+=("redis://127.0.0.1:$port/"); done
REDIS_CLUSTER_NODES=$(IFS=,; echo "${urls[*]}") \
  cargo test -p pingora-tower-test-support --test redis_rate_limit -- \
  --ignored --nocapture a_redis_cluster_holds_the_same_limits
