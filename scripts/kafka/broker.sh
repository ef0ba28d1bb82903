#!/usr/bin/env bash
# One Apache Kafka node in KRaft combined mode (broker + controller) on loopback, in the
# foreground: the process that runs this script becomes the JVM (exec), so its pid is the
# broker's and signals (SIGTERM, SIGSTOP) reach the broker itself.
#
# Usage: scripts/kafka/broker.sh DATA_DIR PORT CONTROLLER_PORT
#
# The storage in DATA_DIR is formatted on first start (a new cluster id) and reused after, so
# data survives a restart. The classpath is .stack/kafka/libs, filled by `scripts/stack.sh
# install` from scripts/kafka/pom.xml. The stack's broker and the tests that need a broker of
# their own (tests/broker_restart.rs) both start it here. KAFKA_HEAP (default 512m) caps the heap.
set -euo pipefail

[ $# -eq 3 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=$1 PORT=$2 CPORT=$3
LIBS="$ROOT/.stack/kafka/libs"
[ -d "$LIBS" ] || { echo "broker.sh: $LIBS is missing: run 'make install' first" >&2; exit 1; }
JAVA=${JAVA:-java}
mkdir -p "$DATA/log"

cat >"$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA/log
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests form groups all the time; waiting 3 s before the first rebalance only slows them.
group.initial.rebalance.delay.ms=0
# As production clusters should be: topics are created on purpose (the connectors do).
auto.create.topics.enable=false
PROPS

export KAFKA_LOG4J_OPTS=""
CP="$LIBS/*"
if [ ! -f "$DATA/log/meta.properties" ]; then
    id=$("$JAVA" -cp "$CP" kafka.tools.StorageTool random-uuid 2>/dev/null)
    "$JAVA" -cp "$CP" -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.yaml" \
        kafka.tools.StorageTool format -t "$id" -c "$DATA/server.properties" --ignore-formatted >&2
fi
exec "$JAVA" -Xms128m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.yaml" \
    -cp "$CP" kafka.Kafka "$DATA/server.properties"
