#!/usr/bin/env bash
# broker_map.sh -- runs broker_map.lua as it would run across hosts, on
# this one: a private redis-server (loopback, a random port and password,
# nothing saved), two `luamp worker` processes of two slots each, and the
# job; then stops them all.
#
# Usage: scripts/examples/broker_map.sh [LUAMP]   (default: build/luamp)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
luamp=${1:-$here/../../build/luamp}
dir=$(mktemp -d)
pw=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
pids=()
cleanup() {
  set +e
  trap - EXIT INT TERM HUP
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
for _ in $(seq 20); do
  port=$((20000 + RANDOM % 40000))
  if redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
       --requirepass "$pw" --dir "$dir" --daemonize yes \
       --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" &&
     for _ in $(seq 50); do
       redis-cli -p "$port" -a "$pw" --no-auth-warning ping 2>/dev/null |
         grep -q PONG && break
       sleep 0.1
     done && [ -f "$dir/redis.pid" ]; then
    break
  fi
done
export LUAMP_BROKER="redis://:$pw@127.0.0.1:$port/0"
"$luamp" keygen >"$dir/key"
chmod 600 "$dir/key"
export LUAMP_AUTHKEY_FILE=$dir/key
for i in 1 2; do
  "$luamp" worker "$LUAMP_BROKER" -c 2 --name "host$i" --exit-on-broker-loss \
    >>"$dir/workers.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  [ "$(grep -c serving "$dir/workers.log" 2>/dev/null)" = 2 ] && break
  sleep 0.1
done
"$luamp" "$here/broker_map.lua"
