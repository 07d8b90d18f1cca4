# shellcheck shell=bash
# A real Kubernetes API server for the operator's tests, on a machine without Docker or internet:
# kube-apiserver v1.20.2 built from Debian bookworm's `kubernetes` source package (cached outside
# the work tree), with Debian's etcd. When KUBECONFIG already points at a cluster that answers
# (kind, k3d, a real one), that cluster is used instead and nothing is built or started.
# Requires scripts/lib/services.sh (log, as_root, apt_install, port_open).

KUBE_CACHE=${KUBE_CACHE:-/var/cache/pgtrickle-relay/kube}
KUBE_APISERVER_BIN="$KUBE_CACHE/bin/kube-apiserver"
KUBE_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBE_GIT_VERSION="v1.20.2"
# Bumped when the private server's flags change: a running server of another setup is replaced.
KUBE_SETUP_VERSION=2

# kubectl: the machine's if any (any recent one works against 1.20), else Debian's client.
ensure_kubectl() {
  command -v kubectl >/dev/null 2>&1 || apt_install kubernetes-client
}

# A private apt configuration under "$1/apt" with one deb-src line, built from the machine's own
# Debian source (its URIs and key), so the system's apt sources are left untouched. Shared with
# scripts/lib/cluster.sh.
kube_source_apt_config() {
  local work=$1 uri key
  mkdir -p "$work/apt/lists/partial" "$work/apt/archives/partial" "$work/apt/cache"
  uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  key=$(awk '/^Signed-By:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" && $0 ~ /bookworm/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$uri" ] || { log "no Debian mirror found in the machine's apt sources"; return 1; }
  if [ -n "$key" ]; then
    echo "deb-src [signed-by=$key] $uri bookworm main" > "$work/apt/sources.list"
  else
    echo "deb-src $uri bookworm main" > "$work/apt/sources.list"
  fi
  cat > "$work/apt/apt.conf" <<CONF
Dir::Etc::SourceList "$work/apt/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$work/apt/lists";
Dir::Cache "$work/apt/cache";
Dir::Cache::archives "$work/apt/archives";
CONF
}

# Run in a subshell with `set -e`, after kube_source_apt_config WORK: downloads Debian's kubernetes
# source into WORK, prepares it for a GOPATH build (GOCACHE: $2), cds into it and sets
# KUBE_LDFLAGS (the version stamps). Shared by kube-apiserver's build and scripts/lib/cluster.sh.
kube_source_tree() {
  local work=$1 p
  cd "$work"
  export APT_CONFIG="$work/apt/apt.conf"
  apt-get update -qq >/dev/null
  apt-get source -qq --download-only "kubernetes=$KUBE_SRC_VERSION" >/dev/null
  mkdir -p gopath/src/k8s.io tree
  tar -xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz -C tree --strip-components=1
  # Go >= 1.18 crashes 1.20's vendored reflect2 1.0.1 / json-iterator 1.1.10 on the first custom
  # resource: use Debian's 1.0.2 / 1.1.12 sources instead.
  for lib in modern-go/reflect2 json-iterator/go; do
    rm -rf "tree/vendor/github.com/$lib"
    mkdir -p "tree/vendor/github.com/$lib"
    find "/usr/share/gocode/src/github.com/$lib" -maxdepth 1 -name '*.go' ! -name '*_test.go' \
      -exec cp {} "tree/vendor/github.com/$lib/" \;
  done
  ln -s "$work/tree" gopath/src/k8s.io/kubernetes
  cd gopath/src/k8s.io/kubernetes
  export GOPATH="$work/gopath" GOCACHE="$2" GO111MODULE=off GOPROXY=off GOFLAGS=
  nice -n 19 make gen_openapi >"$work/gen_openapi.log" 2>&1
  KUBE_LDFLAGS="-s -w"
  for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    KUBE_LDFLAGS="$KUBE_LDFLAGS -X $p.gitVersion=$KUBE_GIT_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20"
  done
}

ensure_kube_apiserver_binary() {
  if [ -x "$KUBE_APISERVER_BIN" ]; then
    return 0
  fi
  local pkgs=()
  command -v go >/dev/null 2>&1 || pkgs+=(golang-go)
  command -v etcd >/dev/null 2>&1 || pkgs+=(etcd-server etcd-client)
  command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || pkgs+=(golang-github-modern-go-reflect2-dev)
  [ -d /usr/share/gocode/src/github.com/json-iterator/go ] || pkgs+=(golang-github-json-iterator-go-dev)
  [ "${#pkgs[@]}" = 0 ] || apt_install "${pkgs[@]}"

  local work="$KUBE_CACHE/build"
  rm -rf "$work"
  mkdir -p "$KUBE_CACHE/bin"
  kube_source_apt_config "$work" || return 1
  log "building kube-apiserver $KUBE_GIT_VERSION from Debian's kubernetes source (once; cached in $KUBE_CACHE)"
  (
    set -e
    kube_source_tree "$work" "$work/gocache"
    CGO_ENABLED=0 go build -p 2 -tags selinux,notest -ldflags "$KUBE_LDFLAGS" -o "$KUBE_APISERVER_BIN.tmp" ./cmd/kube-apiserver
    mv "$KUBE_APISERVER_BIN.tmp" "$KUBE_APISERVER_BIN"
  ) || { log "kube-apiserver build failed (work tree kept in $work)"; return 1; }
  rm -rf "$work"
}

kube_answers() {
  [ -n "${KUBECONFIG:-}" ] && [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1
}

# Exports KUBECONFIG for a cluster that answers: the caller's, else a private etcd + kube-apiserver
# (secure port 6443 unless KUBE_PORT says otherwise; state under $PGTRICKLE_RELAY_STATE/kube) with
# RBAC enforced, so the operator's own permissions (deploy/base/rbac.yaml) are tested; the tests' admin
# token is in system:masters.
ensure_kube() {
  ensure_kubectl
  if kube_answers; then
    log "Kubernetes API answers at KUBECONFIG=$KUBECONFIG (reused)"
    return 0
  fi
  local dir="$PGTRICKLE_RELAY_STATE/kube" port=${KUBE_PORT:-6443} etcd_port=${KUBE_ETCD_PORT:-2379}
  export KUBECONFIG="$dir/kubeconfig"
  if kube_answers && [ "$(cat "$dir/setup-version" 2>/dev/null)" = "$KUBE_SETUP_VERSION" ]; then
    log "private kube-apiserver answers on 127.0.0.1:$port (reused)"
    return 0
  fi
  ensure_kube_apiserver_binary
  command -v etcd >/dev/null 2>&1 || apt_install etcd-server etcd-client
  # A previous private pair that no longer answers (or runs another setup): stop it, start afresh.
  for pidfile in "$dir/apiserver.pid" "$dir/etcd.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    port_open "$port" || port_open "$etcd_port" || break
    sleep 0.2
  done
  rm -rf "$dir"
  mkdir -p "$dir/etcd" "$dir/certs"
  log "starting etcd on 127.0.0.1:$etcd_port and kube-apiserver on 127.0.0.1:$port (state in $dir)"
  nohup etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    >"$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  openssl genrsa -out "$dir/sa.key" 2048 >/dev/null 2>&1
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" >/dev/null 2>&1
  local token
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" > "$dir/tokens.csv"
  for _ in $(seq 1 50); do port_open "$etcd_port" && break; sleep 0.2; done
  nohup "$KUBE_APISERVER_BIN" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --secure-port="$port" --cert-dir="$dir/certs" --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local --service-cluster-ip-range=10.96.0.0/16 \
    --endpoint-reconciler-type=none --disable-admission-plugins=ServiceAccount >"$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
  cat > "$KUBECONFIG" <<CONF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
CONF
  for _ in $(seq 1 120); do kube_answers && break; sleep 0.5; done
  kube_answers || { log "kube-apiserver did not become ready; see $dir/apiserver.log"; return 1; }
  echo "$KUBE_SETUP_VERSION" > "$dir/setup-version"
}
