#!/usr/bin/env bash
# The whole pipeline on this machine, without Docker: the local stack, a YouTube API stand-in
# serving SAMPLE charts (or the real API when YOUTUBE_API_KEY is set), both connectors, then a
# summary once the sink has caught up. Usage: scripts/demo.sh up|down
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PIDS=.stack/pids
LOGS=.stack/logs
STANDIN_ADDR=127.0.0.1:18090
REGIONS=${YOUTUBE_REGIONS:-FR,US,JP}
say() { printf '[demo] %s\n' "$*" >&2; }

stop_demo() {
    for name in source sink standin; do
        f="$PIDS/demo-$name.pid"
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Stops what this run started and says why, with the end of the log of the step that failed.
fail() { # message [name whose log to show]
    echo >&2
    say "FAILED: $1"
    if [ -n "${2:-}" ] && [ -f "$LOGS/demo-$2.log" ]; then
        say "last lines of $LOGS/demo-$2.log:"
        tail -n 15 "$LOGS/demo-$2.log" >&2
    fi
    stop_demo
    say "the stack is left running (make down stops it)"
    exit 1
}

alive() { local f="$PIDS/demo-$1.pid"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

start() { # name port command...: starts it, then waits until it answers on its port
    local name=$1 port=$2; shift 2
    [ -x "$1" ] || fail "$1 was not built" 
    port_open "$port" && fail "port $port (the $name) is taken by another process: stop it first"
    : >"$LOGS/demo-$name.log"
    "$@" >>"$LOGS/demo-$name.log" 2>&1 </dev/null &
    echo $! >"$PIDS/demo-$name.pid"
    local deadline=$((SECONDS + 30))
    until port_open "$port"; do
        alive "$name" || fail "the $name exited at start" "$name"
        [ $SECONDS -lt $deadline ] || fail "the $name did not answer on port $port within 30 s" "$name"
        sleep 0.2
    done
}

metric() { # port metric-name: sum of its samples
    curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null \
        | awk -v m="$2" '$1 ~ "^"m"({|$)" {s += $2} END {print s + 0}'
}

case "${1:-up}" in
    down)
        stop_demo
        scripts/stack.sh down
        exit 0 ;;
    up) ;;
    *) echo "usage: scripts/demo.sh up|down" >&2; exit 2 ;;
esac

scripts/stack.sh up || { say "FAILED: the local stack did not come up (see above)"; exit 1; }
mkdir -p "$PIDS" "$LOGS"
stop_demo
say "building the connectors and the API stand-in (first time: a few minutes)"
# Two invocations: with two -p and a pkg/feature flag cargo leaves out the stand-in (its
# required feature is not enabled for that selection), and a stale target/ would hide it.
cargo build -q -p sink-connector --bins || fail "building the sink failed (output above)"
cargo build -q -p source-connector --features standin --bins || fail "building the source failed (output above)"
# shellcheck disable=SC1091
. .stack/test.env
export DATABASE_URL="$TEST_DATABASE_URL"
export KAFKA_BOOTSTRAP_SERVERS="$TEST_KAFKA_BOOTSTRAP" SCHEMA_REGISTRY_URL="$TEST_SCHEMA_REGISTRY_URL"
export YOUTUBE_REGIONS="$REGIONS"

if [ -n "${YOUTUBE_API_KEY:-}" ]; then
    say "YOUTUBE_API_KEY is set: polling the real YouTube API for $REGIONS"
else
    say "no YOUTUBE_API_KEY: SAMPLE DATA from the stand-in on $STANDIN_ADDR (not YouTube's charts)"
    charts=()
    IFS=, read -ra regions <<<"$REGIONS"
    for r in "${regions[@]}"; do charts+=("$r=200"); done
    start standin "${STANDIN_ADDR##*:}" target/debug/youtube-standin "$STANDIN_ADDR" "${charts[@]}"
    export YOUTUBE_API_BASE_URL="http://$STANDIN_ADDR/youtube/v3" YOUTUBE_API_KEY=sample-data-no-key
fi
HTTP_ADDR=127.0.0.1:9102 start sink 9102 target/debug/sink-connector
HTTP_ADDR=127.0.0.1:9101 start source 9101 target/debug/source-connector
say "source on :9101, sink on :9102 (logs: .stack/logs/demo-*.log)"

# Wait until every region was polled and the sink has written every published record.
nregions=$(tr ',' '\n' <<<"$REGIONS" | grep -c .)
deadline=$((SECONDS + 300))
while :; do
    polls=$(curl -fsS http://127.0.0.1:9101/metrics 2>/dev/null | grep '^source_polls_total{' | grep -c 'outcome="success"' || true)
    published=$(metric 9101 source_videos_published_total)
    written=$(metric 9102 sink_records_written_total)
    printf '\r[demo] regions polled %s/%s, records published %s, written to PostgreSQL %s   ' \
        "$polls" "$nregions" "$published" "$written" >&2
    if [ "$polls" -ge "$nregions" ] && [ "$published" -gt 0 ] && [ "$written" -ge "$published" ]; then
        echo >&2; break
    fi
    for name in source sink standin; do
        [ -f "$PIDS/demo-$name.pid" ] && ! alive "$name" && fail "the $name exited" "$name"
    done
    if [ $SECONDS -ge $deadline ]; then
        fail "not caught up within 5 minutes; see $LOGS/demo-*.log and the readiness of each: curl 127.0.0.1:9101/readyz, curl 127.0.0.1:9102/readyz" source
    fi
    sleep 1
done

# The password goes through the environment: on the command line `ps` would show it.
pg_pw=$(cat .stack/pg_password)
psql_q() { PGPASSWORD="$pg_pw" psql "${DATABASE_URL/:$pg_pw@/@}" -X -q -P pager=off "$@"; }
echo
if [ -f "$PIDS/demo-standin.pid" ]; then
    echo "*** SAMPLE DATA: generated by the API stand-in, not YouTube's charts. Set YOUTUBE_API_KEY for real ones. ***"
fi
echo "Rows per region (latest poll):"
psql_q -c "SELECT region_code AS region, count(*) AS videos, max(fetched_at) AS polled_at
           FROM video_snapshots s
           WHERE fetched_at = (SELECT max(fetched_at) FROM video_snapshots WHERE region_code = s.region_code)
           GROUP BY region_code ORDER BY region_code"
first=$(cut -d, -f1 <<<"$REGIONS")
echo "Today's top 10 in $first:"
# The region goes in as a psql variable (:'region' quotes it), not pasted into the SQL.
psql_q -v region="$first" <<'SQL'
SELECT s.rank, left(v.title, 50) AS title, v.channel_title AS channel, s.view_count AS views
FROM video_snapshots s JOIN videos v USING (video_id)
WHERE s.region_code = :'region'
  AND s.fetched_at = (SELECT max(fetched_at) FROM video_snapshots WHERE region_code = :'region')
ORDER BY s.rank LIMIT 10;
SQL
cat <<TXT
Metrics:    http://127.0.0.1:9101/metrics (source), http://127.0.0.1:9102/metrics (sink)
Prometheus: http://127.0.0.1:19090 (alerts loaded from prometheus/alerts.yml)
Database:   PGPASSWORD=\$(cat .stack/pg_password) psql -h 127.0.0.1 -U trending trending
The connectors keep running (next poll in 30 min). Stop everything with: make demo-down
TXT
