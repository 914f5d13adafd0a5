#!/usr/bin/env bash
# A real Kubernetes control plane for the Kubernetes provider's tests, built offline.
#
#   scripts/k8s-rig.sh build       build kube-apiserver + kube-controller-manager once (cached)
#   scripts/k8s-rig.sh run DIR     start etcd, kube-apiserver, kube-controller-manager on free
#                                  loopback ports, write DIR/kubeconfig (admin token) and
#                                  DIR/ready, then wait; on SIGTERM/SIGINT stop them in order
#   scripts/k8s-rig.sh start DIR   the same in the background (pid in DIR/rig.pid)
#   scripts/k8s-rig.sh stop DIR    stop a background rig and wait for it
#
# No Kubernetes binary is in any registry reachable here, so the apiserver and controller
# manager (1.20.2) are built from Debian's `kubernetes` source package with Debian's Go. There
# is no scheduler and no kubelet: pods stay Pending until a test plays the kubelet by patching
# their status.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${K8S_RIG_CACHE:-$HOME/.cache/compute-worker/k8s}"
bin="$cache/bin"

log() { echo "k8s-rig: $*" >&2; }

install_debs() {
  local missing=()
  command -v go >/dev/null || missing+=(golang-go)
  command -v etcd >/dev/null || missing+=(etcd-server)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || missing+=(golang-github-modern-go-reflect2-dev)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build() {
  install_debs
  if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ]; then
    return 0
  fi
  local work="$cache/build"
  rm -rf "$work" && mkdir -p "$work/apt/lists/partial" "$work/apt/sources.list.d" "$bin"
  # apt-get source needs deb-src entries: derive them from the system's deb822 sources in a
  # private apt directory, leaving the system's configuration untouched.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed 's/^Types: deb$/Types: deb-src/' "$f" >"$work/apt/sources.list.d/$(basename "$f")"
  done
  local aptopts=(-o "APT::Sandbox::User=root" -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/apt/sources.list.d"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt")
  log "fetching Debian's kubernetes source package"
  apt-get "${aptopts[@]}" update -qq >/dev/null
  (cd "$work" && apt-get "${aptopts[@]}" source --download-only kubernetes >/dev/null)
  tar xzf "$work"/kubernetes_*.orig.tar.gz -C "$work"
  local src
  src=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
  # The vendored reflect2 1.0.1 segfaults under Go >= 1.18; Debian's 1.0.2 does not.
  local r2="$src/vendor/github.com/modern-go/reflect2"
  rm -f "$r2"/*.go "$r2"/*.s
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r2"/
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$r2"/ 2>/dev/null || true
  rm -f "$r2"/*_test.go
  log "building kube-apiserver and kube-controller-manager (10-15 min on first run)"
  (cd "$src" && CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/make.log" 2>&1) || {
    tail -40 "$work/make.log" >&2
    exit 1
  }
  cp "$src/_output/bin/kube-apiserver" "$src/_output/bin/kube-controller-manager" "$bin/"
  rm -rf "$work"
  log "built into $bin"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # wait_for SECONDS CMD...: retry CMD until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

run() {
  local dir="$1"
  build
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  rm -f "$dir/ready" "$dir/kubeconfig"
  local etcd_client etcd_peer api
  etcd_client=$(free_port); etcd_peer=$(free_port); api=$(free_port)
  local token="admin-$(openssl rand -hex 16)"
  echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  mkdir -p "$dir/etcd" "$dir/certs"

  local pids=()
  stop_all() {
    # Ignore further signals while stopping (a test binary's exit can send several): a second
    # TERM must not cut the ordered stop short and orphan the apiserver.
    trap '' TERM INT
    trap - EXIT
    # Reverse order: controller manager, apiserver, then etcd; KILL whatever hangs.
    local i n
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      kill -TERM "${pids[i]}" 2>/dev/null || true
      for ((n = 0; n < 100; n++)); do
        kill -0 "${pids[i]}" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "${pids[i]}" 2>/dev/null || true
      wait "${pids[i]}" 2>/dev/null || true
    done
    rm -f "$dir/ready"
    exit 0
  }
  trap stop_all TERM INT EXIT

  etcd --data-dir "$dir/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
  pids+=($!)
  wait_for 30 curl -sf "http://127.0.0.1:$etcd_client/health" || { log "etcd did not start"; tail "$dir/etcd.log" >&2; exit 1; }

  "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_client" \
    --secure-port "$api" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file "$dir/sa.key" --service-account-signing-key-file "$dir/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.0.0.0/24 --disable-admission-plugins=ServiceAccount \
    --allow-privileged=false >"$dir/apiserver.log" 2>&1 &
  pids+=($!)
  wait_for 60 curl -skf -H "Authorization: Bearer $token" "https://127.0.0.1:$api/readyz" ||
    { log "kube-apiserver did not become ready"; tail -20 "$dir/apiserver.log" >&2; exit 1; }

  local ca
  ca=$(base64 -w0 "$dir/certs/apiserver.crt")
  cat >"$dir/kubeconfig.tmp" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: rig
  cluster:
    server: https://127.0.0.1:$api
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $token
contexts:
- name: rig
  context: {cluster: rig, user: admin, namespace: default}
current-context: rig
KCFG
  mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"

  # Client-side limits raised well above the defaults (20 QPS, 5 syncs): with 100 rollouts at
  # once the defaults make the controller manager, not the worker, the bottleneck.
  "$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --secure-port=0 --port=0 --service-account-private-key-file "$dir/sa.key" \
    --use-service-account-credentials=false \
    --kube-api-qps=500 --kube-api-burst=1000 \
    --concurrent-deployment-syncs=20 --concurrent-replicaset-syncs=20 \
    >"$dir/controller-manager.log" 2>&1 &
  pids+=($!)
  echo "https://127.0.0.1:$api" >"$dir/ready"
  log "ready: KUBECONFIG=$dir/kubeconfig"
  # Exit (and stop the rest) if any component dies.
  wait -n "${pids[@]}" || true
  log "a component exited; stopping the rig"
  stop_all
}

case "${1:-}" in
  build) build ;;
  run) run "${2:?usage: $0 run DIR}" ;;
  start)
    dir="${2:?usage: $0 start DIR}"; mkdir -p "$dir"
    setsid "$here/k8s-rig.sh" run "$dir" >"$dir/rig.log" 2>&1 </dev/null &
    echo $! >"$dir/rig.pid"
    for _ in $(seq 1 600); do
      [ -f "$dir/ready" ] && { echo "KUBECONFIG=$dir/kubeconfig"; exit 0; }
      kill -0 "$(cat "$dir/rig.pid")" 2>/dev/null || { cat "$dir/rig.log" >&2; exit 1; }
      sleep 0.2
    done
    log "timed out waiting for the rig"; exit 1 ;;
  stop)
    dir="${2:?usage: $0 stop DIR}"
    if [ -f "$dir/rig.pid" ]; then
      pid=$(cat "$dir/rig.pid"); kill -TERM "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      rm -f "$dir/rig.pid"
    fi ;;
  *) echo "usage: $0 build | run DIR | start DIR | stop DIR" >&2; exit 2 ;;
esac
