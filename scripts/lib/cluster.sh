# shellcheck shell=bash
# A real single-node Kubernetes 1.20 on this machine, where pods actually run (issue #17):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and kubelet built from
# Debian bookworm's `kubernetes` 1.20 source package (like scripts/lib/kube.sh's kube-apiserver),
# with Debian's containerd + runc + CNI plugins. No image registry is reachable: the pause image and
# every other image are built locally as OCI archives and imported into containerd.
#
# Everything runs from private folders: binaries and image archives are cached under
# $CLUSTER_CACHE (built once); the running cluster's state is under $CLUSTER_STATE and $CLUSTER_RUN
# and is removed by `cluster_down`, which also undoes the machine changes the components make
# (iptables chains, sysctls, cgroups, the bridge, the folders kubelet and the CNI plugins insist on).
# Requires scripts/lib/services.sh (log, as_root, apt_install, port_open) and scripts/lib/kube.sh.

CLUSTER_CACHE=${CLUSTER_CACHE:-/var/cache/pgtrickle-relay/cluster}
CLUSTER_STATE=${CLUSTER_STATE:-${PGTRICKLE_RELAY_STATE:-/var/tmp/pgtrickle-relay}/cluster}
CLUSTER_RUN=${CLUSTER_RUN:-/run/pgtrickle-relay-cluster}
# Ports of the cluster's own etcd and API server: not those of kube.sh's test API server (2379, 6443).
CLUSTER_ETCD_PORT=${CLUSTER_ETCD_PORT:-12379}
CLUSTER_API_PORT=${CLUSTER_API_PORT:-16443}
# The pods' bridge and network; its gateway address is HOST_IP, where pods reach the machine.
CLUSTER_BRIDGE=${CLUSTER_BRIDGE:-pgtr0}
CLUSTER_POD_CIDR=${CLUSTER_POD_CIDR:-10.244.0.0/24}
CLUSTER_HOST_IP=${CLUSTER_HOST_IP:-10.244.0.1}
CLUSTER_SERVICE_CIDR=${CLUSTER_SERVICE_CIDR:-10.96.0.0/16}
# The machine's loopback-only services that pods reach at HOST_IP:PORT (a socat forwarder each).
CLUSTER_HOST_PORTS=${CLUSTER_HOST_PORTS:-5432 4222}
CLUSTER_NODE_NAME=${CLUSTER_NODE_NAME:-pgtrickle-relay-node}
CLUSTER_PAUSE_IMAGE=localhost/pause:3.4.1
# Bumped when the cluster's flags or layout change: a running cluster of another setup is replaced.
CLUSTER_SETUP_VERSION=1

KUBE_BIN_DIR="$KUBE_CACHE/bin"
CLUSTER_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)

clog() { printf '[cluster %3ds] %s\n' "$SECONDS" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Build (once): the Kubernetes binaries and the pause program, from Debian's kubernetes source.

cluster_binaries_present() {
  local c
  for c in "${CLUSTER_COMPONENTS[@]}" pause; do
    [ -x "$KUBE_BIN_DIR/$c" ] || return 1
  done
}

# The same recipe as kube.sh's ensure_kube_apiserver_binary (private apt configuration with one
# deb-src line, Debian's reflect2/json-iterator in vendor/, make gen_openapi, GOPATH build), for
# every binary that is missing; Go runs at nice 19 (2 cores, shared with other builds).
ensure_cluster_binaries() {
  cluster_binaries_present && return 0
  local pkgs=()
  command -v go >/dev/null 2>&1 || pkgs+=(golang-go)
  command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || pkgs+=(golang-github-modern-go-reflect2-dev)
  [ -d /usr/share/gocode/src/github.com/json-iterator/go ] || pkgs+=(golang-github-json-iterator-go-dev)
  [ "${#pkgs[@]}" = 0 ] || apt_install "${pkgs[@]}"

  local work="$KUBE_CACHE/cluster-build" missing=() c
  for c in "${CLUSTER_COMPONENTS[@]}"; do
    [ -x "$KUBE_BIN_DIR/$c" ] || missing+=("$c")
  done
  rm -rf "$work"
  mkdir -p "$KUBE_BIN_DIR"
  kube_source_apt_config "$work" || return 1
  clog "building ${missing[*]:-} pause from Debian's kubernetes $KUBE_GIT_VERSION source (once; cached in $KUBE_BIN_DIR)"
  (
    set -e
    kube_source_tree "$work" "$KUBE_CACHE/gocache"
    # The sandbox ("pause") program: static, so its image needs nothing else.
    gcc -Os -Wall -Werror -static -DVERSION="v3.4.1-pgtrickle-relay" -o "$KUBE_BIN_DIR/pause.tmp" build/pause/linux/pause.c
    strip "$KUBE_BIN_DIR/pause.tmp"
    mv "$KUBE_BIN_DIR/pause.tmp" "$KUBE_BIN_DIR/pause"
    for c in "${missing[@]}"; do
      clog "go build ./cmd/$c"
      CGO_ENABLED=0 nice -n 19 go build -p 2 -tags selinux,notest -ldflags "$KUBE_LDFLAGS" -o "$KUBE_BIN_DIR/$c.tmp" "./cmd/$c"
      mv "$KUBE_BIN_DIR/$c.tmp" "$KUBE_BIN_DIR/$c"
    done
  ) || { clog "Kubernetes build failed (work tree kept in $work)"; return 1; }
  rm -rf "$work" "$KUBE_CACHE/gocache"
}

# ---------------------------------------------------------------------------------------------
# Images: OCI image archives written by this script (no registry, no Docker), imported into
# containerd's k8s.io namespace. A layer is a reproducible tar (sorted, fixed mtime, uid 0), so the
# same input gives the same digest.

# oci_archive NAME ROOTFS OUT CONFIG_JSON: writes an OCI image layout tar at OUT holding ROOTFS as
# one layer, named NAME (a full reference, e.g. docker.io/library/x:dev); CONFIG_JSON is the image
# config's "config" object ({"Entrypoint": [...], "User": "65532:65532", ...}).
oci_archive() {
  local name=$1 rootfs=$2 out=$3 config=$4
  local d
  d=$(mktemp -d "${TMPDIR:-/tmp}/oci.XXXXXX")
  mkdir -p "$d/blobs/sha256"
  # Files keep their owners (root, but for instance /home/nonroot of 65532); the root is 0755.
  chmod 0755 "$rootfs"
  tar --sort=name --mtime=@0 --numeric-owner -C "$rootfs" -cf "$d/layer.tar" .
  local layer_sha layer_size
  layer_sha=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$d/layer.tar")
  mv "$d/layer.tar" "$d/blobs/sha256/$layer_sha"
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"scripts/lib/cluster.sh oci_archive"}]}' \
    "$config" "$layer_sha" > "$d/config.json"
  local cfg_sha cfg_size
  cfg_sha=$(sha256sum "$d/config.json" | cut -d' ' -f1)
  cfg_size=$(stat -c %s "$d/config.json")
  mv "$d/config.json" "$d/blobs/sha256/$cfg_sha"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cfg_sha" "$cfg_size" "$layer_sha" "$layer_size" > "$d/manifest.json"
  local man_sha man_size
  man_sha=$(sha256sum "$d/manifest.json" | cut -d' ' -f1)
  man_size=$(stat -c %s "$d/manifest.json")
  mv "$d/manifest.json" "$d/blobs/sha256/$man_sha"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man_sha" "$man_size" "$name" "${name##*:}" > "$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$d" -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$d"
}

# The sandbox image: the pause program alone, as upstream's (user 65535).
build_pause_image() {
  local out="$CLUSTER_CACHE/images/pause.tar"
  [ -f "$out" ] && [ "$out" -nt "$KUBE_BIN_DIR/pause" ] && return 0
  local root
  root=$(mktemp -d)
  install -m 0755 "$KUBE_BIN_DIR/pause" "$root/pause"
  oci_archive "$CLUSTER_PAUSE_IMAGE" "$root" "$out" '{"Entrypoint":["/pause"],"User":"65535:65535"}'
  rm -rf "$root"
}

# A tiny test image: Debian's busybox-static with its applets, as localhost/busybox:cluster.
build_busybox_image() {
  local out="$CLUSTER_CACHE/images/busybox.tar" bb=/bin/busybox
  [ -f "$out" ] && [ "$out" -nt "$bb" ] && return 0
  dpkg -s busybox-static >/dev/null 2>&1 || apt_install busybox-static
  local root a
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  install -m 0755 "$bb" "$root/bin/busybox"
  for a in $("$bb" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  chmod 1777 "$root/tmp"
  echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
  echo 'root:x:0:' > "$root/etc/group"
  oci_archive localhost/busybox:cluster "$root" "$out" '{"Entrypoint":["/bin/sh"],"Env":["PATH=/bin"]}'
  rm -rf "$root"
}

cluster_ctr() { ctr --address "$CLUSTER_RUN/containerd/containerd.sock" -n k8s.io "$@"; }

# Imports every archive in $CLUSTER_CACHE/images (pause, busybox and whatever else was built there).
import_cluster_images() {
  local f
  for f in "$CLUSTER_CACHE"/images/*.tar; do
    [ -f "$f" ] || continue
    cluster_ctr images import "$f" >/dev/null || { clog "image import failed: $f"; return 1; }
  done
}

# ---------------------------------------------------------------------------------------------
# Processes: each component runs in its own session (setsid), its pid and start time recorded, so
# `down` stops exactly what `up` started (and a reused pid is never mistaken for ours).

_pid_file() { echo "$CLUSTER_STATE/pid/$1"; }
_starttime() { awk '{ print $22 }' "/proc/$1/stat" 2>/dev/null; }
# Alive: exists and is not a zombie (this machine's init reaps orphans only every few seconds).
_alive() { [ -d "/proc/$1" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

cluster_start() {
  local name=$1
  shift
  mkdir -p "$CLUSTER_STATE/pid" "$CLUSTER_STATE/log"
  # fd 9 is scripts/cluster's lock: the daemons must not hold it.
  setsid "$@" >>"$CLUSTER_STATE/log/$name.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  echo "$pid $(_starttime "$pid")" > "$(_pid_file "$name")"
}

# Prints the pid when the component recorded under NAME still runs.
cluster_pid() {
  local f pid st
  f=$(_pid_file "$1")
  [ -f "$f" ] || return 1
  read -r pid st < "$f"
  [ -n "$pid" ] && _alive "$pid" && [ "$(_starttime "$pid")" = "$st" ] && echo "$pid"
}

# Stops the component's whole process group (socat's per-connection children included).
cluster_stop() {
  local name=$1 pid
  if pid=$(cluster_pid "$name"); then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local t0=$SECONDS
    for _ in $(seq 1 100); do _alive "$pid" || break; sleep 0.1; done
    [ $((SECONDS - t0)) -lt 3 ] || clog "$name took $((SECONDS - t0)) s to stop"
    if _alive "$pid"; then
      clog "$name ($pid) did not stop on TERM: KILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$(_pid_file "$name")"
}

wait_for() {
  local what=$1 tries=$2
  shift 2
  for _ in $(seq 1 "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  clog "$what did not come up (logs in $CLUSTER_STATE/log)"
  return 1
}

# ---------------------------------------------------------------------------------------------
# What `up` changes on the machine outside its private folders, recorded before the first change
# so `down` puts it back.

# Folders kubelet, containerd and the CNI plugins create at fixed places (whatever their flags).
CLUSTER_FIXED_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/netns /run/containerd /opt/containerd /etc/cni /etc/kubernetes)
# Sysctls kubelet (its kernel tunables), kube-proxy and the bridge plugin (ip_forward) set.
CLUSTER_SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

record_machine() {
  local m="$CLUSTER_STATE/machine"
  [ -f "$m/done" ] && return 0
  mkdir -p "$m"
  : > "$m/absent-paths"
  local p s
  for p in "${CLUSTER_FIXED_PATHS[@]}"; do
    [ -e "$p" ] || echo "$p" >> "$m/absent-paths"
  done
  : > "$m/sysctls"
  for s in "${CLUSTER_SYSCTLS[@]}"; do
    v=$(sysctl -n "$s" 2>/dev/null) && echo "$s=$v" >> "$m/sysctls"
  done
  ls /run/netns 2>/dev/null > "$m/netns" || true
  # Another kubelet's cgroups (none expected): then `down` leaves kubepods alone.
  ls -d /sys/fs/cgroup/*/kubepods > "$m/kubepods-before" 2>/dev/null || true
  for t in iptables ip6tables; do
    $t-save 2>/dev/null | grep -cE '(KUBE|CNI)-' > "$m/$t-ours-before" || true
  done
  touch "$m/done"
}

# Puts recorded sysctls back; with a pattern, only those whose name matches it. kubelet sets its
# kernel tunables (kernel.panic_on_oops=1, vm.overcommit_memory=1, …) once at start: `up` puts
# those back right away, so the machine keeps its own while the cluster runs. The network ones
# (ip_forward: pod → Service → pod is routed) stay set until `down`.
restore_sysctls() {
  local f="$CLUSTER_STATE/machine/sysctls" pattern=${1:-.} kv
  [ -f "$f" ] || return 0
  while read -r kv; do
    printf '%s\n' "${kv%%=*}" | grep -qE "$pattern" || continue
    [ "$(sysctl -n "${kv%%=*}" 2>/dev/null)" = "${kv#*=}" ] || sysctl -qw "$kv" >/dev/null 2>&1 || true
  done < "$f"
}

# Removes the iptables chains kubelet, kube-proxy and portmap created (KUBE-*, CNI-*) and the
# rules that jump to them, leaving every other rule as it is; only when there were none before.
remove_iptables_chains() {
  local t table
  for t in iptables ip6tables; do
    command -v "$t-save" >/dev/null 2>&1 || continue
    [ "$(cat "$CLUSTER_STATE/machine/$t-ours-before" 2>/dev/null || echo 0)" = 0 ] || continue
    for table in filter nat mangle; do
      if $t-save -t "$table" 2>/dev/null | grep -qE '(KUBE|CNI)-'; then
        $t-save -t "$table" 2>/dev/null | grep -vE '(KUBE|CNI)-' | $t-restore -T "$table" 2>/dev/null \
          || $t-save -t "$table" 2>/dev/null | grep -vE '(KUBE|CNI)-' | $t-restore 2>/dev/null || clog "could not clean $t $table"
      fi
    done
  done
}

# Processes left in kubelet's cgroups (containers whose runtime died): every one of them was started
# by this cluster; killed by pid.
kill_kubepods_processes() {
  local procs pid
  [ -s "$CLUSTER_STATE/machine/kubepods-before" ] && return 0
  for _ in $(seq 1 20); do
    procs=$(find /sys/fs/cgroup/*/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -n "$procs" ] || return 0
    for pid in $procs; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.25
  done
  clog "processes still in kubepods cgroups: $procs"
}

# kubelet's cgroups (cgroupfs driver): /sys/fs/cgroup/<hierarchy>/kubepods, deepest first.
remove_kubepods_cgroups() {
  local d
  [ -s "$CLUSTER_STATE/machine/kubepods-before" ] && return 0
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$d" ] && clog "cgroup $d still in use"
  done
  return 0
}

# Unmounts everything mounted below DIR (deepest first).
unmount_below() {
  local dir=$1 m
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || clog "could not unmount $m"
  done
}

# ---------------------------------------------------------------------------------------------
# Configuration: certificates, tokens, kubeconfigs, containerd, CNI, kubelet.

_san() { printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature,keyEncipherment\n' "$1" "$2"; }

write_cluster_config() {
  local s=$CLUSTER_STATE pki=$CLUSTER_STATE/pki server="https://$CLUSTER_HOST_IP:$CLUSTER_API_PORT"
  mkdir -p "$pki" "$s/etcd" "$s/log" "$s/kubelet" "$s/cni/net.d" "$s/cni/networks" "$s/containerd/root" "$s/containerd/opt" "$CLUSTER_RUN/containerd"
  # A cluster CA; the API server's serving certificate names every address pods and people use,
  # so in-cluster clients (the service-account ca.crt) verify it.
  openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj /CN=pgtrickle-relay-cluster-ca -days 3650 -out "$pki/ca.crt" 2>/dev/null
  openssl genrsa -out "$pki/apiserver.key" 2048 2>/dev/null
  openssl req -new -key "$pki/apiserver.key" -subj /CN=kube-apiserver -out "$pki/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 \
    -extfile <(_san "IP:$CLUSTER_HOST_IP,IP:${CLUSTER_SERVICE_CIDR%.*/*}.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost" serverAuth) \
    -out "$pki/apiserver.crt" 2>/dev/null
  # The API server's client certificate towards kubelet (logs, exec, port-forward).
  openssl genrsa -out "$pki/kubelet-client.key" 2048 2>/dev/null
  openssl req -new -key "$pki/kubelet-client.key" -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" -out "$pki/kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out "$pki/kubelet-client.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  # One bearer token per identity: each component under its own user (RBAC's bootstrap roles, the
  # Node authorizer for kubelet); the people and the tests are cluster admins.
  local u tok
  : > "$pki/tokens.csv"
  for u in admin kubelet controller-manager scheduler proxy; do
    tok=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    case $u in
      admin) echo "$tok,admin,admin,system:masters" ;;
      kubelet) echo "$tok,system:node:$CLUSTER_NODE_NAME,kubelet,system:nodes" ;;
      controller-manager) echo "$tok,system:kube-controller-manager,kcm" ;;
      scheduler) echo "$tok,system:kube-scheduler,ksched" ;;
      proxy) echo "$tok,system:kube-proxy,kproxy" ;;
    esac >> "$pki/tokens.csv"
    cat > "$s/$u.kubeconfig" <<CONF
apiVersion: v1
kind: Config
clusters:
- name: pgtrickle-relay
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $u
  user:
    token: $tok
contexts:
- name: pgtrickle-relay
  context: {cluster: pgtrickle-relay, user: $u, namespace: default}
current-context: pgtrickle-relay
CONF
  done
  cp "$s/admin.kubeconfig" "$s/kubeconfig"

  # containerd: private root, state and socket; CRI with runc (cgroupfs), our CNI config folder and
  # the locally built pause image as the sandbox image.
  cat > "$s/containerd.toml" <<CONF
version = 2
root = "$s/containerd/root"
state = "$CLUSTER_RUN/containerd/state"
oom_score = 0
[grpc]
  address = "$CLUSTER_RUN/containerd/containerd.sock"
[ttrpc]
  address = "$CLUSTER_RUN/containerd/containerd.sock.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "$s/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$CLUSTER_PAUSE_IMAGE"
  enable_selinux = false
  # This machine withholds CAP_SYS_RESOURCE even from root: an oom_score_adj below containerd's own
  # (kubelet asks -998 for sandboxes) is refused, so containerd clamps it to its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$CLUSTER_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$s/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
CONF

  # Pods on a bridge whose gateway is HOST_IP; addresses from host-local (its state kept here).
  cat > "$s/cni/net.d/10-pgtrickle-relay.conflist" <<CONF
{
  "cniVersion": "0.4.0",
  "name": "pgtrickle-relay",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CLUSTER_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$s/cni/networks",
        "ranges": [[{ "subnet": "$CLUSTER_POD_CIDR", "gateway": "$CLUSTER_HOST_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
CONF

  cat > "$s/kubelet.yaml" <<CONF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $CLUSTER_HOST_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# Images cannot be pulled again here: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
serializeImagePulls: false
maxPods: 60
# Ready sooner after start, pod status sooner (a one-node test cluster: the extra writes are cheap).
nodeStatusUpdateFrequency: 3s
nodeStatusReportFrequency: 1m
CONF
}

# ---------------------------------------------------------------------------------------------
# up / down / status

cluster_kubectl() { kubectl --kubeconfig "$CLUSTER_STATE/kubeconfig" "$@"; }
cluster_api_ready() { cluster_kubectl get --raw /readyz >/dev/null 2>&1; }
cluster_node_ready() {
  [ "$(cluster_kubectl get node "$CLUSTER_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
cluster_forwarders() { local p; for p in $CLUSTER_HOST_PORTS; do echo "forward-$p"; done; }
# shellcheck disable=SC2046 # one word per forwarder
cluster_all_names() { echo etcd kube-apiserver containerd kube-controller-manager kube-scheduler kube-proxy kubelet $(cluster_forwarders); }

cluster_running() {
  [ "$(cat "$CLUSTER_STATE/setup-version" 2>/dev/null)" = "$CLUSTER_SETUP_VERSION" ] || return 1
  local n
  for n in $(cluster_all_names); do cluster_pid "$n" >/dev/null || return 1; done
  # Each answers, not merely runs: containerd's socket, kubelet's health endpoint, the API, the node.
  cluster_ctr version >/dev/null 2>&1 && curl -fsS -m 2 http://127.0.0.1:10248/healthz >/dev/null 2>&1 \
    && cluster_api_ready && cluster_node_ready
}

cluster_exports() {
  echo "export KUBECONFIG=$CLUSTER_STATE/kubeconfig"
  echo "export HOST_IP=$CLUSTER_HOST_IP"
}

ensure_cluster_packages() {
  local pkgs=()
  command -v containerd >/dev/null 2>&1 || pkgs+=(containerd)
  command -v runc >/dev/null 2>&1 || pkgs+=(runc)
  [ -x /usr/lib/cni/bridge ] || pkgs+=(containernetworking-plugins)
  command -v etcd >/dev/null 2>&1 || pkgs+=(etcd-server etcd-client)
  command -v iptables >/dev/null 2>&1 || pkgs+=(iptables)
  command -v conntrack >/dev/null 2>&1 || pkgs+=(conntrack)
  command -v socat >/dev/null 2>&1 || pkgs+=(socat)
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  dpkg -s busybox-static >/dev/null 2>&1 || pkgs+=(busybox-static)
  [ "${#pkgs[@]}" = 0 ] || apt_install "${pkgs[@]}"
  ensure_kubectl
}

cluster_up() {
  ensure_cluster_packages
  ensure_cluster_binaries
  if cluster_running; then
    clog "cluster answers at https://$CLUSTER_HOST_IP:$CLUSTER_API_PORT, node $CLUSTER_NODE_NAME Ready (reused)"
    ensure_relay_images
    cluster_exports
    return 0
  fi
  # A cluster half up, of another setup, or left by a killed run: take it down first.
  [ -d "$CLUSTER_STATE" ] && cluster_down
  build_pause_image
  build_busybox_image
  local s=$CLUSTER_STATE bin=$KUBE_BIN_DIR
  mkdir -p "$s"
  record_machine
  clog "starting a single-node Kubernetes $KUBE_GIT_VERSION (state in $s, logs in $s/log)"
  write_cluster_config

  # The pods' bridge, with HOST_IP, exists before anything binds to HOST_IP.
  if ! ip link show "$CLUSTER_BRIDGE" >/dev/null 2>&1; then
    ip link add "$CLUSTER_BRIDGE" type bridge
    echo created > "$s/machine/bridge"
  fi
  ip addr replace "$CLUSTER_HOST_IP/${CLUSTER_POD_CIDR#*/}" dev "$CLUSTER_BRIDGE"
  ip link set "$CLUSTER_BRIDGE" up
  # Pod → Service → pod traffic is routed through the node (the bridge plugin would set it too).
  sysctl -qw net.ipv4.ip_forward=1

  cluster_start etcd etcd --name pgtrickle-relay-cluster --data-dir "$s/etcd" \
    --listen-client-urls "http://127.0.0.1:$CLUSTER_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$CLUSTER_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((CLUSTER_ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((CLUSTER_ETCD_PORT + 1))" \
    --initial-cluster "pgtrickle-relay-cluster=http://127.0.0.1:$((CLUSTER_ETCD_PORT + 1))" --listen-metrics-urls ""
  cluster_start containerd containerd --config "$s/containerd.toml"
  wait_for etcd 60 port_open "$CLUSTER_ETCD_PORT"

  local pki=$s/pki
  cluster_start kube-apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$CLUSTER_ETCD_PORT" \
    --bind-address="$CLUSTER_HOST_IP" --advertise-address="$CLUSTER_HOST_IP" --secure-port="$CLUSTER_API_PORT" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --service-cluster-ip-range="$CLUSTER_SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --api-audiences=https://kubernetes.default.svc.cluster.local \
    --kubelet-client-certificate="$pki/kubelet-client.crt" --kubelet-client-key="$pki/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP --profiling=false
  wait_for containerd 60 test -S "$CLUSTER_RUN/containerd/containerd.sock"
  import_cluster_images
  # kubelet and kube-proxy start while the API server comes up (they retry until it answers).
  # Services (ClusterIPs, kubernetes.default included) by kube-proxy's iptables mode; it leaves the
  # conntrack sysctls alone.
  cluster_start kube-proxy "$bin/kube-proxy" --kubeconfig="$s/proxy.kubeconfig" --hostname-override="$CLUSTER_NODE_NAME" \
    --proxy-mode=iptables --cluster-cidr="$CLUSTER_POD_CIDR" --bind-address="$CLUSTER_HOST_IP" \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  cluster_start kubelet "$bin/kubelet" --config="$s/kubelet.yaml" --kubeconfig="$s/kubelet.kubeconfig" \
    --root-dir="$s/kubelet" --cert-dir="$s/kubelet/pki" --hostname-override="$CLUSTER_NODE_NAME" --node-ip="$CLUSTER_HOST_IP" \
    --container-runtime=remote --container-runtime-endpoint="unix://$CLUSTER_RUN/containerd/containerd.sock" \
    --image-service-endpoint="unix://$CLUSTER_RUN/containerd/containerd.sock" --runtime-request-timeout=5m --v=1

  wait_for kube-apiserver 240 cluster_api_ready
  clog "kube-apiserver ready"

  cluster_start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$s/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$s/controller-manager.kubeconfig" --authorization-kubeconfig="$s/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range="$CLUSTER_SERVICE_CIDR" --allocate-node-cidrs=false --profiling=false
  cluster_start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$s/scheduler.kubeconfig" \
    --authentication-kubeconfig="$s/scheduler.kubeconfig" --authorization-kubeconfig="$s/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --port=0 --leader-elect=false --profiling=false
  # The machine's loopback-only services, at HOST_IP for pods: a TCP forwarder each (see
  # docs/cluster-notes.md for why not listen_addresses/pg_hba).
  local p
  for p in $CLUSTER_HOST_PORTS; do
    cluster_start "forward-$p" socat "TCP-LISTEN:$p,bind=$CLUSTER_HOST_IP,reuseaddr,fork" "TCP:127.0.0.1:$p"
  done

  wait_for "node $CLUSTER_NODE_NAME Ready" 240 cluster_node_ready
  clog "node $CLUSTER_NODE_NAME Ready"
  restore_sysctls '^(vm|kernel)\.'
  # Pods get service-account tokens once the token controller made the default account's secret.
  wait_for "the default service account's token" 120 \
    sh -c "[ -n \"\$(kubectl --kubeconfig '$s/kubeconfig' -n default get serviceaccount default -o jsonpath='{.secrets[0].name}' 2>/dev/null)\" ]"
  echo "$CLUSTER_SETUP_VERSION" > "$s/setup-version"
  clog "cluster up: node $CLUSTER_NODE_NAME Ready, API at https://$CLUSTER_HOST_IP:$CLUSTER_API_PORT, HOST_IP=$CLUSTER_HOST_IP (ports $CLUSTER_HOST_PORTS)"
  ensure_relay_images
  cluster_exports
}

cluster_down() {
  local s=$CLUSTER_STATE
  if [ ! -d "$s" ]; then
    clog "no cluster state in $s: nothing to stop"
    return 0
  fi
  clog "stopping the cluster (state in $s)"
  # Pods first, through kubelet, so containerd tears their sandboxes and networks down properly.
  if cluster_pid kubelet >/dev/null && cluster_api_ready; then
    cluster_stop kube-controller-manager
    cluster_stop kube-scheduler
    clog "deleting every pod (kubelet stops their containers and tears their sandboxes down)"
    cluster_kubectl delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do
      cluster_ctr tasks list 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" { found = 1 } END { exit !found }' || break
      sleep 0.5
    done
  fi
  local n
  for n in $(cluster_forwarders) kubelet kube-proxy kube-scheduler kube-controller-manager; do cluster_stop "$n"; done
  # Whatever containers remain (kubelet gone): kill their tasks, so their shims exit.
  if cluster_pid containerd >/dev/null; then
    local c
    for c in $(cluster_ctr tasks list -q 2>/dev/null); do
      cluster_ctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for c in $(cluster_ctr tasks list -q 2>/dev/null); do
      cluster_ctr tasks delete -f "$c" >/dev/null 2>&1 || true
    done
  fi
  clog "stopping containerd, kube-apiserver, etcd; cleaning up"
  cluster_stop containerd
  # Shims of our containerd (they outlive it by design): by pid, those naming our socket.
  local pid
  for pid in $(pgrep -f -- "-address $CLUSTER_RUN/containerd/containerd.sock" 2>/dev/null || true); do
    case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
      */containerd-shim*) kill -KILL "$pid" 2>/dev/null || true ;;
    esac
  done
  # Containers whose shim is gone: through runc's own state, then whatever is left in kubepods.
  local id
  for id in $(runc --root "$CLUSTER_RUN/runc/k8s.io" list -q 2>/dev/null || true); do
    runc --root "$CLUSTER_RUN/runc/k8s.io" delete -f "$id" >/dev/null 2>&1 || true
  done
  kill_kubepods_processes
  cluster_stop kube-apiserver
  cluster_stop etcd
  if [ -x "$KUBE_BIN_DIR/kube-proxy" ]; then
    "$KUBE_BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  remove_iptables_chains
  # Network namespaces containerd made (cni-*), ours only.
  local ns
  for ns in $(ls /run/netns 2>/dev/null || true); do
    case $ns in cni-*) ;; *) continue ;; esac
    grep -qx "$ns" "$s/machine/netns" 2>/dev/null && continue
    umount "/run/netns/$ns" 2>/dev/null || umount -l "/run/netns/$ns" 2>/dev/null || true
    rm -f "/run/netns/$ns"
  done
  if [ -f "$s/machine/bridge" ]; then
    ip link del "$CLUSTER_BRIDGE" 2>/dev/null || true
  fi
  remove_kubepods_cgroups
  restore_sysctls
  unmount_below "$s"
  unmount_below "$CLUSTER_RUN"
  local p
  if [ -f "$s/machine/absent-paths" ]; then
    while read -r p; do
      case $p in
        '') ;;
        # Shared with anyone's `ip netns add`: only our namespaces were removed above; the folder
        # goes only when empty.
        /run/netns) rmdir /run/netns 2>/dev/null || true ;;
        *)
          unmount_below "$p"
          rm -rf --one-file-system "$p"
          ;;
      esac
    done < "$s/machine/absent-paths"
  fi
  rm -rf --one-file-system "$s" "$CLUSTER_RUN"
  clog "cluster stopped; machine state restored"
}

cluster_status() {
  local n pid rc=0
  if [ ! -d "$CLUSTER_STATE" ]; then
    echo "cluster: down (no state in $CLUSTER_STATE)"
    return 3
  fi
  for n in $(cluster_all_names); do
    if pid=$(cluster_pid "$n"); then
      printf '%-24s running (pid %s)\n' "$n" "$pid"
    else
      printf '%-24s not running\n' "$n"
      rc=1
    fi
  done
  if cluster_api_ready; then
    echo "api: https://$CLUSTER_HOST_IP:$CLUSTER_API_PORT ready"
    cluster_kubectl get nodes -o wide 2>&1 | sed 's/^/  /'
    cluster_kubectl get pods -A -o wide 2>&1 | sed 's/^/  /'
  else
    echo "api: not answering"
    rc=1
  fi
  echo "HOST_IP=$CLUSTER_HOST_IP forwards: $CLUSTER_HOST_PORTS"
  echo "KUBECONFIG=$CLUSTER_STATE/kubeconfig"
  return "$rc"
}

# A pod from the locally built busybox image, as the relay pods will run (uid 65532, read-only root
# filesystem, no privileges): Running and Ready, its readiness probe a TCP connection to
# HOST_IP:5432; then, inside it, PostgreSQL's answer to an SSLRequest at HOST_IP:5432, NATS's INFO
# at HOST_IP:4222, the service-account token, and the API server through the kubernetes Service.
cluster_smoke() {
  cluster_running || { clog "no cluster running: scripts/cluster up first"; return 1; }
  local ns=cluster-smoke
  cluster_kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  cluster_kubectl create namespace "$ns" >/dev/null
  for _ in $(seq 1 60); do
    cluster_kubectl -n "$ns" get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.5
  done
  cluster_kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: smoke
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
  containers:
    - name: smoke
      image: localhost/busybox:cluster
      imagePullPolicy: Never
      command: ["/bin/sleep", "3600"]
      readinessProbe:
        exec:
          command: ["/bin/sh", "-c", "nc -w 2 $CLUSTER_HOST_IP 5432 </dev/null"]
        periodSeconds: 2
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: ["ALL"]}
YAML
  local t0=$SECONDS
  cluster_kubectl -n "$ns" wait pod/smoke --for=condition=Ready --timeout=120s >&2 \
    || { cluster_kubectl -n "$ns" describe pod smoke >&2; return 1; }
  clog "pod Ready after $((SECONDS - t0)) s"
  cluster_kubectl -n "$ns" get pod smoke -o wide
  echo "--- inside the pod:"
  cluster_kubectl -n "$ns" exec smoke -- sh -c "
    echo \"id: \$(id)\"
    echo \"ip: \$(ip -4 -o addr show eth0 | awk '{print \$4}')\"
    touch /probe 2>/dev/null && echo 'root fs: WRITABLE' || echo 'root fs: read-only'
    printf 'PostgreSQL at $CLUSTER_HOST_IP:5432 answers an SSLRequest with: '; printf '\\0\\0\\0\\10\\4\\322\\26\\57' | nc -w 3 $CLUSTER_HOST_IP 5432; echo
    printf 'NATS at $CLUSTER_HOST_IP:4222 says: '; nc -w 3 $CLUSTER_HOST_IP 4222 </dev/null | head -c 30; echo
    echo \"service-account token: \$(wc -c < /var/run/secrets/kubernetes.io/serviceaccount/token) bytes, namespace \$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)\"
    printf 'kubernetes Service %s:%s: ' \"\$KUBERNETES_SERVICE_HOST\" \"\$KUBERNETES_SERVICE_PORT\"
    nc -w 3 \"\$KUBERNETES_SERVICE_HOST\" \"\$KUBERNETES_SERVICE_PORT\" </dev/null && echo 'TCP connect ok' || echo 'unreachable'
  "
  cluster_kubectl delete namespace "$ns" --wait=false >/dev/null
}

# ---------------------------------------------------------------------------------------------
# The relay and operator images, from the working tree: the debug binaries the test suite builds
# anyway (shared target folder), stripped, on an empty base with exactly the shared libraries they
# need, under the Dockerfile's runtime contract (uid/gid 65532, same entrypoints, no writes to the
# root filesystem needed). Imported as pgtrickle-relay:dev and pgtrickle-relay-operator:dev.

CLUSTER_CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pgtrickle-relay/target}

# runtime_rootfs DIR BINARY NAME: an empty base like distroless/cc's nonroot variant, plus BINARY
# at /usr/local/bin/NAME and every shared library `ldd` lists for it.
runtime_rootfs() {
  local root=$1 bin=$2 name=$3 lib
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  strip --strip-debug -o "$root/usr/local/bin/$name" "$bin"
  chmod 0755 "$root/usr/local/bin/$name"
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  # Debian's merged /usr: /lib64/ld-linux-x86-64.so.2 is what the binary's interpreter names.
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$root/etc/group"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
}

# image_digest ARCHIVE: the manifest digest an archive holds; cluster_image_digest NAME: containerd's.
image_digest() { tar -xOf "$1" index.json | sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p'; }
cluster_image_digest() { cluster_ctr images ls "name==$1" 2>/dev/null | awk 'NR > 1 { print $3 }'; }

# Packs BINARY as image NAME into ARCHIVE (when the binary changed) and imports it (when containerd
# holds another digest under that name).
pack_and_import() {
  local name=$1 bin=$2 exe=$3 archive=$4 config=$5
  if [ ! -f "$archive" ] || [ "$bin" -nt "$archive" ]; then
    local root
    root=$(mktemp -d)
    runtime_rootfs "$root" "$bin" "$exe"
    oci_archive "$name" "$root" "$archive" "$config"
    rm -rf "$root"
  fi
  import_if_changed "$archive"
}

# Imports ARCHIVE unless containerd already holds its digest under its name.
import_if_changed() {
  local archive=$1 name
  name=$(tar -xOf "$archive" index.json | sed -n 's/.*"io.containerd.image.name":"\([^"]*\)".*/\1/p')
  if [ "$(cluster_image_digest "$name")" != "$(image_digest "$archive")" ]; then
    clog "importing $name ($(du -h "$archive" | cut -f1))"
    cluster_ctr images import "$archive" >/dev/null
  fi
}

# CLUSTER_RELAY_IMAGES=0: no cargo build; the images last built (if any) are imported as they are.
ensure_relay_images() {
  local t=$CLUSTER_CARGO_TARGET_DIR/debug a
  if [ "${CLUSTER_RELAY_IMAGES:-1}" != 1 ]; then
    for a in "$CLUSTER_CACHE"/images/relay/*.tar; do
      [ -f "$a" ] && import_if_changed "$a"
    done
    return 0
  fi
  clog "building the relay and operator binaries from the working tree (cargo, debug, target $CLUSTER_CARGO_TARGET_DIR)"
  (
    export CARGO_TARGET_DIR=$CLUSTER_CARGO_TARGET_DIR
    nice -n 19 cargo build --quiet --locked -p relay-runtime --bin pgtrickle-relay --all-features >&2
    nice -n 19 cargo build --quiet --locked -p pgtrickle-relay-operator --bin pgtrickle-relay-operator >&2
  ) || { clog "cargo build failed: no relay images"; return 1; }
  pack_and_import docker.io/library/pgtrickle-relay:dev "$t/pgtrickle-relay" pgtrickle-relay \
    "$CLUSTER_CACHE/images/relay/pgtrickle-relay.tar" \
    '{"User":"65532:65532","Entrypoint":["/usr/local/bin/pgtrickle-relay"],"Cmd":["run"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/home/nonroot","ExposedPorts":{"9090/tcp":{}}}'
  pack_and_import docker.io/library/pgtrickle-relay-operator:dev "$t/pgtrickle-relay-operator" pgtrickle-relay-operator \
    "$CLUSTER_CACHE/images/relay/pgtrickle-relay-operator.tar" \
    '{"User":"65532:65532","Entrypoint":["/usr/local/bin/pgtrickle-relay-operator"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/home/nonroot","ExposedPorts":{"8080/tcp":{}}}'
}
