#!/usr/bin/env bash
# The local stack without Docker: a Kafka-protocol broker (tansu), a Confluent-API schema
# registry (rivven-schema), PostgreSQL 15 and Prometheus, as local processes on fixed loopback
# ports. Usage: scripts/stack.sh install|up|down|status|logs
#
#   install  install what is missing (pinned versions), skip what is present
#   up       install, then start everything not yet running and wait until each answers
#   down     stop exactly what `up` started (pid files), waiting until each has exited
#   status   say what answers on which port
#
# State lives in .stack/ (gitignored): logs in .stack/logs/, pid files in .stack/pids/, data
# in .stack/data/, the generated PostgreSQL password and test settings in .stack/test.env.
# Set STACK_BROKER_STORAGE=postgres before `up` for a broker that keeps its data across restarts
# (database `tansu` in the stack's PostgreSQL; see the README's known differences).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.stack"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
DATA="$STATE/data"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

TANSU_VERSION=0.6.0
RIVVEN_VERSION=0.0.22
KAFKA_PORT=${STACK_KAFKA_PORT:-19092}
REGISTRY_PORT=${STACK_REGISTRY_PORT:-18081}
PG_PORT=5432
PROMETHEUS_PORT=${STACK_PROMETHEUS_PORT:-19090}
BROKER_STORAGE=${STACK_BROKER_STORAGE:-memory}
PG_ROLE=trending
PG_DB=trending

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

# --- install ---------------------------------------------------------------------------------

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Installed at this version with at least these features (cargo records them in .crates2.json).
installed_with() { # name version features(comma-separated, may be empty)
    local name=$1 version=$2 features=$3 entry f
    [ -x "$CARGO_BIN/$name" ] && cargo install --list | grep -q "^$name v$version:" || return 1
    entry=$(grep -o "\"$name $version [^}]*}" "${CARGO_HOME:-$HOME/.cargo}/.crates2.json" 2>/dev/null) \
        || return 1
    for f in ${features//,/ }; do grep -q "\"$f\"" <<<"$entry" || return 1; done
}

cargo_install() { # name version features(comma-separated, may be empty)
    local name=$1 version=$2 features=$3
    installed_with "$name" "$version" "$features" && return 0
    log "cargo install $name $version${features:+ (features $features)} (slow the first time: tansu about 25-30 min, rivven-schema about 6 min on 2 cores)"
    cargo install --locked --version "$version" ${features:+--features "$features"} "$name" \
        >"$LOGS/install-$name.log" 2>&1 \
        || die "cargo install $name failed, see $LOGS/install-$name.log"
}

install() {
    mkdir -p "$LOGS"
    # Build deps of rdkafka (cmake-build with SSL) and the stack's Debian packages.
    apt_install cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev curl postgresql-15 prometheus \
        docker-compose
    # postgres: the storage that keeps a broker's data across restarts (the fault suite's
    # broker restart); libsql (SQLite) is kept for STACK_BROKER_STORAGE=sqlite.
    cargo_install tansu "$TANSU_VERSION" libsql,dynostore,postgres
    cargo_install rivven-schema "$RIVVEN_VERSION" ""
}

# --- processes -------------------------------------------------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid of a process we started, if it is still that process.
our_pid() { # name binary
    local f="$PIDS/$1.pid" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"; then
        echo "$pid"
    else
        rm -f "$f"
        return 1
    fi
}

start() { # name binary port command...
    local name=$1 bin=$2 port=$3; shift 3
    if our_pid "$name" "$bin" >/dev/null; then
        log "$name already running (pid $(cat "$PIDS/$name.pid"))"
        return 0
    fi
    if port_open "$port"; then
        die "port $port is taken by another process: stop it, or set STACK_*_PORT (see README)"
    fi
    log "starting $name on 127.0.0.1:$port (log: .stack/logs/$name.log)"
    # exec keeps one pid from here to the server, so the pid file names the server itself.
    (cd "$STATE" && exec setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null) &
    echo $! >"$PIDS/$name.pid"
}

wait_until() { # what seconds command...
    local what=$1 seconds=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not answer within ${seconds}s, see $LOGS/"
        sleep 0.3
    done
    log "$what answers"
}

stop() { # name binary
    local name=$1 bin=$2 pid
    pid=$(our_pid "$name" "$bin") || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit in 30s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PIDS/$name.pid"
}

# --- components ------------------------------------------------------------------------------

start_broker() {
    # In the environment, not the command line: a postgres:// URL carries the role's password.
    # tansu logs that URL whole at debug level, so its level is pinned whatever RUST_LOG says.
    local -x STORAGE_ENGINE RUST_LOG=warn
    case "$BROKER_STORAGE" in
        memory) STORAGE_ENGINE="memory://tansu/" ;;
        # Relative to the working directory, .stack/: the file is .stack/data/tansu.db.
        sqlite) STORAGE_ENGINE="sqlite://data/tansu.db" ;;
        postgres) STORAGE_ENGINE=$(tansu_database) ;;
        *) die "STACK_BROKER_STORAGE must be memory, sqlite or postgres, not $BROKER_STORAGE" ;;
    esac
    start tansu "$CARGO_BIN/tansu" "$KAFKA_PORT" "$CARGO_BIN/tansu" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT"
    wait_until "tansu (Kafka API, $BROKER_STORAGE storage) on :$KAFKA_PORT" 60 port_open "$KAFKA_PORT"
}

# The database of a broker on PostgreSQL storage, with tansu's tables; prints its URL.
tansu_database() {
    # In a command substitution set -e is off: each failure is checked here.
    as_postgres psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL || die "could not create the database tansu"
SELECT 'CREATE DATABASE tansu OWNER $PG_ROLE'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tansu') \gexec
SQL
    PGPASSWORD=$(cat "$STATE/pg_password") psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
        -U "$PG_ROLE" -d tansu -f "$STATE/tansu-postgres.sql" >/dev/null \
        || die "could not create tansu's tables in database tansu"
    echo "postgres://$PG_ROLE:$(cat "$STATE/pg_password")@127.0.0.1:$PG_PORT/tansu?sslmode=disable"
}

start_registry() {
    start rivven-schema "$CARGO_BIN/rivven-schema" "$REGISTRY_PORT" \
        "$CARGO_BIN/rivven-schema" serve --host 127.0.0.1 --port "$REGISTRY_PORT"
    wait_until "rivven-schema (schema registry) on :$REGISTRY_PORT" 60 \
        curl -fsS "http://127.0.0.1:$REGISTRY_PORT/subjects"
}

start_prometheus() {
    # A fresh TSDB at each start: the dashboard tests must see only what this run produced.
    our_pid prometheus /usr/bin/prometheus >/dev/null || rm -rf "$DATA/prometheus"
    start prometheus /usr/bin/prometheus "$PROMETHEUS_PORT" /usr/bin/prometheus \
        --config.file="$ROOT/prometheus/local.yml" \
        --storage.tsdb.path="$DATA/prometheus" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        --web.enable-lifecycle
    wait_until "prometheus on :$PROMETHEUS_PORT" 60 curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
}

pg_running() { pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $2=="main" {print $4}' | grep -q online; }

start_postgres() {
    if ! pg_running; then
        log "starting PostgreSQL 15 (cluster 15/main) on 127.0.0.1:$PG_PORT"
        as_root pg_ctlcluster 15 main start
        touch "$PIDS/postgres.started-by-stack"
    else
        log "PostgreSQL 15 already running"
    fi
    wait_until "PostgreSQL on :$PG_PORT" 60 pg_isready -q -h 127.0.0.1 -p "$PG_PORT"

    # The project's role gets a password generated on this machine, never stored in the repo.
    local pwfile="$STATE/pg_password"
    if [ ! -s "$pwfile" ]; then
        (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$pwfile")
    fi
    local pw; pw=$(cat "$pwfile")
    # The password goes in on stdin: on the command line `ps` would show it (it is alphanumeric).
    as_postgres psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
\set pw '$pw'
SELECT format('CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD %L', :'pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') \gexec
SELECT format('ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD %L', :'pw') \gexec
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_ROLE'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
    # Databases left by earlier test runs (one per test) are dropped here, not by the tests.
    as_postgres psql -q -At -d postgres -c \
        "SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'" | while read -r db; do
        as_postgres psql -q -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    done
    # Tests that start a broker of their own on PostgreSQL storage create its tables from this.
    "$ROOT/scripts/tansu-pg-schema.sh" "$TANSU_VERSION" >"$STATE/tansu-postgres.sql" \
        || die "could not derive tansu's PostgreSQL schema"
    local url="postgres://$PG_ROLE:$pw@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"
    (umask 077; cat >"$STATE/test.env" <<ENV
# Written by scripts/stack.sh up. Secrets: this file is private to this machine.
TEST_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
TEST_SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT
TEST_DATABASE_URL=$url
TEST_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT
TEST_TANSU_PG_SCHEMA=$STATE/tansu-postgres.sql
ENV
    )
}

stop_postgres() {
    [ -f "$PIDS/postgres.started-by-stack" ] || return 0
    log "stopping PostgreSQL 15 (started by this stack)"
    as_root pg_ctlcluster 15 main stop -m fast || true
    rm -f "$PIDS/postgres.started-by-stack"
}

# --- commands --------------------------------------------------------------------------------

up() {
    install
    mkdir -p "$LOGS" "$PIDS" "$DATA"
    start_postgres
    start_broker
    start_registry
    start_prometheus
    status
}

down() {
    mkdir -p "$PIDS"
    stop prometheus /usr/bin/prometheus
    stop rivven-schema "$CARGO_BIN/rivven-schema"
    stop tansu "$CARGO_BIN/tansu"
    stop_postgres
    log "stopped"
}

status() {
    local line
    for line in "tansu:$KAFKA_PORT:Kafka API" "rivven-schema:$REGISTRY_PORT:schema registry" \
                "postgres:$PG_PORT:PostgreSQL" "prometheus:$PROMETHEUS_PORT:Prometheus"; do
        IFS=: read -r name port what <<<"$line"
        if port_open "$port"; then
            printf '  %-14s 127.0.0.1:%-6s up    (%s)\n' "$name" "$port" "$what"
        else
            printf '  %-14s 127.0.0.1:%-6s down  (%s)\n' "$name" "$port" "$what"
        fi
    done
}

case "${1:-}" in
    install) mkdir -p "$LOGS"; install ;;
    up) up ;;
    down) down ;;
    status) status ;;
    logs) ls -l "$LOGS" ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
