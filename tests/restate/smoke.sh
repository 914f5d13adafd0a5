#!/usr/bin/env bash
# End-to-end smoke test of the Restate test rig, by hand (no cargo): a real restate-server
# (from npm, tests/restate/node_modules) and the Caller service (tests/restate/dist/service.js).
# Checks awakeable resolve, reject, and resolve across a restate-server restart.
# Needs: scripts/install-tools.sh run once (npm ci + tsc), python3, curl.
# Usage: tests/restate/smoke.sh        (KEEP=1 keeps the temp dir with the logs)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin="$here/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
svc="$here/dist/service.js"
[ -x "$bin" ] || { echo "missing $bin: run scripts/install-tools.sh" >&2; exit 1; }
[ -f "$svc" ] || { echo "missing $svc: run scripts/install-tools.sh" >&2; exit 1; }

now_ms() { date +%s%3N; }
log() { echo "[smoke] $*" >&2; }
fail() { echo "[smoke] FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d)
server_pid="" service_pid=""
cleanup() {
  local rc=$?
  for pid in $service_pid $server_pid; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in $service_pid $server_pid; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ $rc -ne 0 ]; then
    echo "--- restate.log (tail)" >&2; tail -n 40 "$tmp/restate.log" >&2 2>/dev/null || true
    echo "--- service.log (tail)" >&2; tail -n 40 "$tmp/service.log" >&2 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "[smoke] kept $tmp" >&2; else rm -rf "$tmp"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Four free loopback ports, held open together so they are distinct.
read -r node_port admin_port ingress_port svc_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')
admin="http://127.0.0.1:$admin_port"
ingress="http://127.0.0.1:$ingress_port"

cat > "$tmp/restate.toml" <<TOML
cluster-name = "compute-worker-test"
node-name = "n1"
listen-mode = "tcp"
bind-address = "127.0.0.1:$node_port"
advertised-address = "http://127.0.0.1:$node_port/"
disable-telemetry = true
default-num-partitions = 2

[admin]
bind-address = "127.0.0.1:$admin_port"

[ingress]
bind-address = "127.0.0.1:$ingress_port"
TOML

wait_http() { # url timeout_s
  local deadline=$(( $(now_ms) + $2 * 1000 ))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    [ "$(now_ms)" -lt "$deadline" ] || return 1
    kill -0 "$server_pid" 2>/dev/null || fail "restate-server exited"
    sleep 0.05
  done
}

start_server() {
  local t0; t0=$(now_ms)
  "$bin" --config-file "$tmp/restate.toml" --base-dir "$tmp/data" --no-logo >>"$tmp/restate.log" 2>&1 &
  server_pid=$!
  wait_http "$admin/health" 30 || fail "admin /health not ready"
  wait_http "$ingress/restate/health" 30 || fail "ingress /restate/health not ready"
  log "restate-server pid $server_pid healthy in $(( $(now_ms) - t0 )) ms"
}

stop_server() {
  local t0; t0=$(now_ms)
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  log "restate-server stopped (SIGTERM) in $(( $(now_ms) - t0 )) ms"
  server_pid=""
}

json() { # python expression over d (the parsed JSON on stdin)
  python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps($1))"
}

start_server

t0=$(now_ms)
PORT=$svc_port node "$svc" >"$tmp/service.log" 2>&1 &
service_pid=$!
for _ in $(seq 200); do
  grep -q "^listening $svc_port\$" "$tmp/service.log" && break
  kill -0 "$service_pid" 2>/dev/null || fail "service exited"
  sleep 0.05
done
grep -q "^listening $svc_port\$" "$tmp/service.log" || fail "service not listening"
log "service pid $service_pid listening on $svc_port in $(( $(now_ms) - t0 )) ms"

t0=$(now_ms)
reg=$(curl -fsS -X POST "$admin/deployments" -H 'content-type: application/json' \
  -d "{\"uri\": \"http://127.0.0.1:$svc_port\"}") || fail "registration failed"
log "registered in $(( $(now_ms) - t0 )) ms: $(echo "$reg" | json '{"id": d.get("id"), "services": [s["name"] for s in d.get("services", [])]}')"
echo "$reg" > "$tmp/registration.json"

send_wait() { # key [json body] -> invocation id
  local r; r=$(curl -fsS -X POST "$ingress/Caller/$1/wait/send" -H 'content-type: application/json' -d "${2:-}") \
    || fail "send to $1 failed"
  echo "[smoke] send $1 -> $r" >&2
  echo "$r" | json 'd["invocationId"]' | tr -d '"'
}

awakeable_id() { # key -> awakeable id (polls until set)
  local t0 r; t0=$(now_ms)
  for _ in $(seq 200); do
    r=$(curl -fsS -X POST "$ingress/Caller/$1/awakeableId" -H 'content-type: application/json' -d '') \
      || fail "awakeableId $1 failed"
    if [ "$r" != "null" ]; then
      echo "[smoke] awakeable id for $1 after $(( $(now_ms) - t0 )) ms: $r" >&2
      echo "$r" | tr -d '"'
      return
    fi
    sleep 0.05
  done
  fail "no awakeable id for $1"
}

complete() { # id resolve|reject body content-type
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$ingress/restate/awakeables/$1/$2" \
    -H "content-type: $4" --data-binary "$3")
  log "$2 $1 -> HTTP $code"
}

attach() { # invocation id -> result body
  local t0 r; t0=$(now_ms)
  r=$(curl -fsS --max-time 30 "$ingress/restate/invocation/$1/attach") || fail "attach $1 failed"
  echo "[smoke] attach $1 after $(( $(now_ms) - t0 )) ms -> $r" >&2
  echo "$r"
}

expect() { # actual expected(JSON)
  python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1]) == json.loads(sys.argv[2]) else 1)' "$1" "$2" \
    || fail "expected $2, got $1"
  log "OK $1"
}

# 1. resolve
inv=$(send_wait k1 '{"callback":"k1"}'); aw=$(awakeable_id k1)
complete "$aw" resolve '{"status":"done","n":42}' application/json
expect "$(attach "$inv")" '{"resolved":{"status":"done","n":42}}'

# 2. reject (text reason)
inv=$(send_wait k2); aw=$(awakeable_id k2)
complete "$aw" reject 'activity failed: boom' text/plain
expect "$(attach "$inv")" '{"rejected":"activity failed: boom"}'

# 3. restate-server restart between awakeable creation and completion
inv=$(send_wait k3); aw=$(awakeable_id k3)
stop_server
start_server
complete "$aw" resolve '"after restart"' application/json
expect "$(attach "$inv")" '{"resolved":"after restart"}'

log "all passed"
