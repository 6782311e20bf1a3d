#!/usr/bin/env bash
# Retention under a steady load: writers insert RATE rows/s for SECONDS while
# the host runs the audit plugin with a short retention age; prints the log's
# row count every 5 s. With retention working it levels off at about
# RATE x (min age + prune interval) instead of growing. Run through
# `./dev bench-retention [SECONDS] [RATE]`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL="${1:-40}"
RATE="${2:-2000}"
SERVER="${PGEVENTS_BENCH_DATABASE_URL:-postgres://postgres@localhost:5432/postgres}"
DB=pgevents_bench_retention
URL="${SERVER%/*}/$DB"
HOST="${CARGO_TARGET_DIR:-target}/release/pgevents-host"
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
cp plugins/audit.wasm "$DIR/"

psql -q "$SERVER" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -q "$URL" -c "CREATE TABLE user_accounts (id bigserial PRIMARY KEY, name text NOT NULL, email text)" \
               -c "CREATE TABLE orders (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id bigint, total numeric, status text)"
"$HOST" run --database-url "$URL" --plugins "$DIR" \
    --retention-min-age 5s --retention-interval 1s 2>"$DIR/host.log" &
host=$!
for _ in $(seq 1 150); do
    psql -Atq "$URL" -c "SELECT count(*) FROM pgevents.cursors" 2>/dev/null | grep -qx 1 && break
    kill -0 "$host" 2>/dev/null || { echo "the host stopped:" >&2; cat "$DIR/host.log" >&2; exit 1; }
    sleep 0.2
done

# One statement of RATE/10 rows every 100 ms.
batch=$((RATE / 10))
(
    end=$((SECONDS + SECONDS_TOTAL))
    while [ "$SECONDS" -lt "$end" ]; do
        psql -q "$URL" -c "INSERT INTO user_accounts (name) SELECT 'user ' || g FROM generate_series(1, $batch) g"
        sleep 0.1
    done
) &
writer=$!
echo "steady load: aiming at $RATE rows/s (one psql per 100 ms statement, so less when busy) for ${SECONDS_TOTAL}s; retention: min age 5 s, every 1 s"
echo "   t    log rows   captured so far"
start=$SECONDS
while kill -0 "$writer" 2>/dev/null; do
    sleep 5
    printf '%4ds %11s %17s\n' $((SECONDS - start)) \
        "$(psql -Atq "$URL" -c "SELECT count(*) FROM pgevents.events")" \
        "$(psql -Atq "$URL" -c "SELECT last_value FROM pgevents.events_seq")"
done
kill -TERM "$host"; wait "$host" || true
psql -q "$SERVER" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
