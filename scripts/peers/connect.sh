#!/usr/bin/env bash
# The benchmark's peer: a Kafka Connect worker (standalone) with Debezium's JDBC sink and
# Apicurio's AvroConverter, all from Maven Central, pinned.
# Usage: scripts/peers/connect.sh install | worker WORKER_PROPERTIES CONNECTOR_PROPERTIES
#
#   install  resolve what is missing into .stack/connect (about 100 MB the first time); skips
#            what is present, and resolves again only when a pom here changed
#   worker   run one standalone worker in the foreground: this process becomes the JVM (exec),
#            so its pid is the worker's and the benchmark samples the whole JVM's RSS and CPU.
#            CONNECT_HEAP (default 2g, connect-standalone.sh's own -Xmx) caps the heap.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/scripts/peers"
STATE="$ROOT/.stack/connect"
LOGS="$ROOT/.stack/logs"
DEBEZIUM_VERSION=3.6.0.Final  # the newest Debezium JDBC sink Maven Central serves here

log() { printf '[peers] %s\n' "$*" >&2; }
die() { printf '[peers] error: %s\n' "$*" >&2; exit 1; }

resolve() { # pom output_dir what [extra mvn args...]
    local pom=$1 out=$2 what=$3; shift 3
    local stamp="$out/.pom.sha256"
    if [ -f "$stamp" ] && [ "$(sha256sum <"$pom")" = "$(cat "$stamp")" ]; then return 0; fi
    log "resolving $what from Maven Central ($(basename "$pom"))"
    rm -rf "$out"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$out" "$@" >"$LOGS/install-$(basename "$out").log" 2>&1 \
        || die "resolving $what failed, see $LOGS/install-$(basename "$out").log"
    sha256sum <"$pom" >"$stamp"
}

install() {
    mkdir -p "$STATE/plugins" "$LOGS"
    resolve "$HERE/connect-pom.xml" "$STATE/libs" "the Kafka Connect worker"
    # The worker provides Kafka's client and Connect's API to every plugin: a plugin's own copy
    # (3.9 here) would only be shadowed.
    resolve "$HERE/converter-pom.xml" "$STATE/plugins/apicurio-converter" "Apicurio's AvroConverter" \
        -DexcludeArtifactIds=kafka-clients,connect-api,slf4j-api
    local dbz="$STATE/plugins/debezium-connector-jdbc"
    if [ "$(cat "$dbz/.version" 2>/dev/null)" != "$DEBEZIUM_VERSION" ]; then
        log "fetching Debezium's JDBC sink $DEBEZIUM_VERSION (plugin archive, about 58 MB the first time)"
        local dl="$ROOT/.stack/downloads"
        mkdir -p "$dl"
        mvn -q -B dependency:copy \
            -Dartifact="io.debezium:debezium-connector-jdbc:$DEBEZIUM_VERSION:tar.gz:plugin" \
            -DoutputDirectory="$dl" >"$LOGS/install-debezium.log" 2>&1 \
            || die "fetching Debezium's JDBC sink failed, see $LOGS/install-debezium.log"
        rm -rf "$dbz"
        tar -xzf "$dl/debezium-connector-jdbc-$DEBEZIUM_VERSION-plugin.tar.gz" -C "$STATE/plugins" \
            || die "unpacking Debezium's JDBC sink failed"
        rm -f "$dl/debezium-connector-jdbc-$DEBEZIUM_VERSION-plugin.tar.gz"
        echo "$DEBEZIUM_VERSION" >"$dbz/.version"
    fi
}

case "${1:-}" in
    install) install ;;
    worker)
        [ $# -eq 3 ] || die "usage: $0 worker WORKER_PROPERTIES CONNECTOR_PROPERTIES"
        [ -d "$STATE/libs" ] || die "$STATE/libs is missing: run '$0 install' first"
        # UTC: the connector binds timestamps through JDBC, whose session time zone is the JVM's.
        exec java -Xms256m -Xmx"${CONNECT_HEAP:-2g}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -Djava.awt.headless=true -Duser.timezone=UTC \
            -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
            -cp "$STATE/libs/*" org.apache.kafka.connect.cli.ConnectStandalone "$2" "$3"
        ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
esac
