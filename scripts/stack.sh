#!/usr/bin/env bash
# The local stack without Docker: Apache Kafka (one KRaft node), Apicurio Registry (Confluent-
# compatible API), PostgreSQL 15 and Prometheus, as local processes on fixed loopback ports.
# Usage: scripts/stack.sh install|up|down|status|logs
#
#   install  install what is missing (pinned versions), skip what is present
#   up       install, then start everything not yet running and wait until each answers
#   down     stop exactly what `up` started (pid files), waiting until each has exited
#   status   say what answers on which port
#
# State lives in .stack/ (gitignored): logs in .stack/logs/, pid files in .stack/pids/, data
# in .stack/data/ (Kafka's log, so topics and the registry's schemas survive down/up), the
# Java components in .stack/kafka and .stack/apicurio-*, the generated PostgreSQL password and
# the test settings in .stack/test.env.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.stack"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
DATA="$STATE/data"

# Pinned versions: Kafka's is in scripts/kafka/pom.xml (the jars come from Maven Central).
APICURIO_VERSION=3.3.3
# The property-based fuzzer the tests run against the control APIs' OpenAPI documents.
SCHEMATHESIS_VERSION=4.32.5
APICURIO_DIR="$STATE/apicurio-$APICURIO_VERSION"
KAFKA_PORT=${STACK_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${STACK_KAFKA_CONTROLLER_PORT:-19093}
REGISTRY_PORT=${STACK_REGISTRY_PORT:-18081}
REGISTRY_MANAGEMENT_PORT=${STACK_REGISTRY_MANAGEMENT_PORT:-18082}
PG_PORT=5432
PROMETHEUS_PORT=${STACK_PROMETHEUS_PORT:-19090}
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

# The Java that runs Apicurio: its 3.x classes need Java 21 or newer (class file 65), and
# Debian 12's default is 17. APICURIO_JAVA wins; else the newest JDK under /usr/lib/jvm.
registry_java() {
    local j v
    for j in "${APICURIO_JAVA:-}" /usr/lib/jvm/*/bin/java java; do
        [ -n "$j" ] && command -v "$j" >/dev/null 2>&1 || continue
        v=$("$j" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
        [ "${v%%.*}" -ge 21 ] 2>/dev/null && { echo "$j"; return 0; }
    done
    return 1
}

install_kafka() {
    local pom="$ROOT/scripts/kafka/pom.xml" stamp="$STATE/kafka/libs/.pom.sha256"
    # Resolved again only when the pom (versions) changed.
    if [ -f "$stamp" ] && [ "$(sha256sum <"$pom")" = "$(cat "$stamp")" ]; then return 0; fi
    log "resolving Apache Kafka from Maven Central (scripts/kafka/pom.xml, about 55 MB the first time)"
    rm -rf "$STATE/kafka/libs"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$STATE/kafka/libs" >"$LOGS/install-kafka.log" 2>&1 \
        || die "resolving Kafka's jars failed, see $LOGS/install-kafka.log"
    sha256sum <"$pom" >"$stamp"
}

install_registry() {
    [ -f "$APICURIO_DIR/quarkus-run.jar" ] && return 0
    log "fetching Apicurio Registry $APICURIO_VERSION from Maven Central (about 160 MB the first time)"
    local dl="$STATE/downloads"
    mkdir -p "$dl"
    mvn -q -B dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
        -DoutputDirectory="$dl" >"$LOGS/install-apicurio.log" 2>&1 \
        || die "fetching Apicurio failed, see $LOGS/install-apicurio.log"
    rm -rf "$APICURIO_DIR.tmp" && mkdir -p "$APICURIO_DIR.tmp"
    tar -xzf "$dl/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$APICURIO_DIR.tmp" \
        || die "unpacking Apicurio failed"
    rm -f "$dl/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
    mv "$APICURIO_DIR.tmp" "$APICURIO_DIR"
}

install_schemathesis() {
    local venv="$STATE/venv"
    [ -x "$venv/bin/schemathesis" ] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" && return 0
    log "installing schemathesis $SCHEMATHESIS_VERSION from PyPI into .stack/venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "creating .stack/venv failed (is python3-venv installed?)"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >"$LOGS/install-schemathesis.log" 2>&1 \
        || die "installing schemathesis failed, see $LOGS/install-schemathesis.log"
}

install() {
    mkdir -p "$LOGS"
    # Build deps of rdkafka (cmake-build with SSL), the stack's Debian packages, Java and Maven.
    apt_install cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev curl openssl postgresql-15 prometheus \
        docker-compose maven openjdk-17-jre-headless python3-venv
    install_kafka
    install_registry
    install_schemathesis
    registry_java >/dev/null || die "Apicurio Registry needs Java 21 or newer and none was found under /usr/lib/jvm: install one, or set APICURIO_JAVA to its java"
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
    local pid=$!
    echo "$pid" >"$PIDS/$name.pid"
    # Until it execs, the child is a copy of this shell, whose command line does not name the
    # server: `our_pid` would take it for a stale pid and the start for a crash (it did, on a
    # busy machine). Wait for the exec, or for the child to be gone (then wait_until says so).
    local _
    for _ in $(seq 1 100); do
        [ -r "/proc/$pid/cmdline" ] || break
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$bin" && break
        sleep 0.05
    done
}

# Waits until `command` succeeds; fails at once, with the end of its log, if the process `name`
# (started by `start`) has exited meanwhile, rather than waiting out the whole time.
wait_until() { # what seconds name binary command...
    local what=$1 seconds=$2 name=$3 bin=$4; shift 4
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ -n "$name" ] && ! our_pid "$name" "$bin" >/dev/null; then
            tail -n 15 "$LOGS/$name.log" >&2 || true
            die "$name exited before it answered; its log: $LOGS/$name.log (last lines above)"
        fi
        [ $SECONDS -lt $deadline ] || die "$what did not answer within ${seconds}s, see $LOGS/$name.log"
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

kafka_ready() { grep -q 'Kafka Server started' "$LOGS/kafka.log" && port_open "$KAFKA_PORT"; }

start_broker() {
    # The controller port is checked too: a taken one makes the broker exit after a while.
    if ! our_pid kafka "$DATA/kafka" >/dev/null && port_open "$KAFKA_CONTROLLER_PORT"; then
        die "port $KAFKA_CONTROLLER_PORT (Kafka's controller) is taken by another process: stop it, or set STACK_KAFKA_CONTROLLER_PORT"
    fi
    # A fresh log per start, so that "Kafka Server started" is this start's.
    our_pid kafka "$DATA/kafka" >/dev/null || : >"$LOGS/kafka.log"
    start kafka "$DATA/kafka" "$KAFKA_PORT" \
        "$ROOT/scripts/kafka/broker.sh" "$DATA/kafka" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
    wait_until "Apache Kafka on :$KAFKA_PORT" 90 kafka "$DATA/kafka" kafka_ready
}

start_registry() {
    local java; java=$(registry_java) || die "no Java 21 or newer for Apicurio Registry (see make install)"
    # kafkasql: the schemas live in a topic of our Kafka (kafkasql-journal), as Confluent's
    # live in _schemas, so they survive a registry restart. BACKWARD is Confluent's default
    # compatibility (Apicurio's own is NONE). Ids through the ccompat API are content ids: one
    # id per distinct schema, shared between subjects, as Confluent's are.
    start apicurio quarkus-run.jar "$REGISTRY_PORT" \
        "$java" -Xms64m -Xmx"${APICURIO_HEAP:-384m}" -XX:+UseSerialGC \
        -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
        -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MANAGEMENT_PORT" \
        -Dquarkus.http.access-log.enabled=false \
        -Dapicurio.storage.kind=kafkasql -Dapicurio.kafkasql.bootstrap.servers="127.0.0.1:$KAFKA_PORT" \
        -Dapicurio.rules.global.compatibility=BACKWARD \
        -jar "$APICURIO_DIR/quarkus-run.jar"
    wait_until "Apicurio Registry (Confluent API at /apis/ccompat/v7) on :$REGISTRY_PORT" 120 \
        apicurio quarkus-run.jar curl -fsS "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects"
}

start_prometheus() {
    # A fresh TSDB at each start: the dashboard tests must see only what this run produced.
    our_pid prometheus /usr/bin/prometheus >/dev/null || rm -rf "$DATA/prometheus"
    start prometheus /usr/bin/prometheus "$PROMETHEUS_PORT" /usr/bin/prometheus \
        --config.file="$ROOT/prometheus/local.yml" \
        --storage.tsdb.path="$DATA/prometheus" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        --web.enable-lifecycle
    wait_until "prometheus on :$PROMETHEUS_PORT" 60 prometheus /usr/bin/prometheus curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
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
    wait_until "PostgreSQL on :$PG_PORT" 60 "" "" pg_isready -q -h 127.0.0.1 -p "$PG_PORT"

    # The project's role gets a password generated on this machine, never stored in the repo.
    local pwfile="$STATE/pg_password"
    if [ ! -s "$pwfile" ]; then
        (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$pwfile")
    fi
    local pw; pw=$(cat "$pwfile")
    # The password goes in on stdin: on the command line `ps` would show it (it is alphanumeric).
    # Names and the password go in as psql variables, quoted by format('%I'/'%L') and :'var'.
    as_postgres psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
\set pw '$pw'
\set role '$PG_ROLE'
\set db '$PG_DB'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
    # Databases left by earlier test runs (one per test) are dropped here, not by the tests.
    as_postgres psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
  FROM pg_database WHERE datname LIKE 'test\_%' \gexec
SQL
    setup_postgres_tls "$pw"
    local url="postgres://$PG_ROLE:$pw@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"
    (umask 077; cat >"$STATE/test.env" <<ENV
# Written by scripts/stack.sh up. Secrets: this file is private to this machine.
TEST_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
TEST_SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7
TEST_DATABASE_URL=$url
TEST_DATABASE_CA=$STATE/tls/ca.crt
TEST_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT
ENV
    )
}

# TLS on the stack's PostgreSQL with a certificate for localhost and 127.0.0.1, signed by a CA
# of this machine's own (.stack/tls/ca.crt, what sslrootcert names in the TLS tests). Made once;
# PostgreSQL's copy of the key sits in its data directory, owned by it, as it requires. This
# sets ssl_cert_file/ssl_key_file of the machine's 15/main cluster (ALTER SYSTEM).
setup_postgres_tls() { # password of the role
    local dir="$STATE/tls" pw=$1
    if [ ! -s "$dir/server.crt" ]; then
        log "making a CA and a server certificate for PostgreSQL (localhost, 127.0.0.1) in .stack/tls"
        mkdir -p "$dir"
        (umask 077 \
         && openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=youtube-trending local stack CA" \
                -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
                -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null \
         && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/server.ext" \
         && openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
                -CAcreateserial -days 3650 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null) \
            || { rm -f "$dir/server.crt"; die "making the PostgreSQL TLS certificate failed (openssl)"; }
        chmod 644 "$dir/ca.crt"
    fi
    local data; data=$(as_postgres psql -Atq -d postgres -c 'SHOW data_directory')
    local current; current=$(as_postgres psql -Atq -d postgres -c 'SHOW ssl_cert_file')
    if [ "$current" != "$data/youtube-trending.crt" ] \
        || ! as_root cmp -s "$dir/server.crt" "$data/youtube-trending.crt" 2>/dev/null; then
        # /usr/bin/install: `install` alone is this script's own function.
        as_root /usr/bin/install -o postgres -g postgres -m 600 "$dir/server.key" "$data/youtube-trending.key"
        as_root /usr/bin/install -o postgres -g postgres -m 644 "$dir/server.crt" "$data/youtube-trending.crt"
        as_postgres psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
ALTER SYSTEM SET ssl = on;
ALTER SYSTEM SET ssl_cert_file = '$data/youtube-trending.crt';
ALTER SYSTEM SET ssl_key_file = '$data/youtube-trending.key';
SELECT pg_reload_conf();
SQL
    fi
    # A reload that cannot load the certificate keeps the old one and says so only in the
    # server's log: check what a client sees (the reload is asynchronous, hence the retries).
    local tries
    for tries in $(seq 1 20); do
        PGPASSWORD=$pw psql -Atq "host=localhost port=$PG_PORT user=$PG_ROLE dbname=$PG_DB sslmode=verify-full sslrootcert=$dir/ca.crt" \
            -c 'SELECT 1' >/dev/null 2>&1 && { log "PostgreSQL serves TLS with .stack/tls/server.crt (CA: .stack/tls/ca.crt)"; return 0; }
        sleep 0.25
    done
    die "PostgreSQL does not serve .stack/tls/server.crt: see its log (/var/log/postgresql/postgresql-15-main.log)"
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
    stop apicurio quarkus-run.jar
    stop kafka "$DATA/kafka"
    stop_postgres
    log "stopped"
}

status() {
    local line
    for line in "kafka:$KAFKA_PORT:Apache Kafka" "apicurio:$REGISTRY_PORT:schema registry, /apis/ccompat/v7" \
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
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
