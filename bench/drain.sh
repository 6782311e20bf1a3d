#!/usr/bin/env bash
# Backlog drain: N rows inserted (one statement) while no host runs, then the
# host starts with the audit example plugin; prints events/s until the audit
# plugin's cursor has passed every event. Also prints the cost of capture on
# that insert. Run through `./dev bench-drain [N]`.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
SERVER="${PGEVENTS_BENCH_DATABASE_URL:-postgres://postgres@localhost:5432/postgres}"
DB=pgevents_bench
URL="${SERVER%/*}/$DB"
HOST="${CARGO_TARGET_DIR:-target}/release/pgevents-host"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cp plugins/audit.wasm "$DIR/"

psql -q "$SERVER" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -q "$URL" -c "CREATE TABLE user_accounts (id bigserial PRIMARY KEY, name text NOT NULL, email text)" \
               -c "CREATE TABLE orders (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id bigint, total numeric, status text)"
"$HOST" install --database-url "$URL" --plugins "$DIR" >/dev/null
# The same insert into an identical table without capture, for the write overhead.
psql -q "$URL" -c "CREATE TABLE plain_accounts (LIKE user_accounts INCLUDING ALL)"
insert_ms() {
    psql -qAt "$URL" -c "\\timing on" \
        -c "INSERT INTO $1 (name, email) SELECT 'user ' || g, 'user' || g || '@example.com' FROM generate_series(1, $N) g" |
        awk '/^Time:/ { print $2 }'
}
plain=$(insert_ms plain_accounts)
captured=$(insert_ms user_accounts)
awk -v n="$N" -v p="$plain" -v c="$captured" 'BEGIN {
    printf "insert of %d rows in one statement: %.0f ms without capture, %.0f ms with capture (%.2fx)\n", n, p, c, c / p
}'

waiting() {
    psql -Atq "$URL" -c "SELECT count(*) FROM pgevents.events e
                         LEFT JOIN pgevents.commits k ON k.txid = e.txid, pgevents.cursors c
                         WHERE c.plugin = 'audit' AND (k.ord IS NULL OR (k.ord, e.seq) > (c.ord, c.seq))"
}
now() { date +%s.%N; }

echo "backlog: $(waiting) events; starting the host (plugin log lines go to /dev/null)"
t0=$(now)
"$HOST" run --database-url "$URL" --plugins "$DIR" 2>"${PGEVENTS_BENCH_LOG:-/dev/null}" &
pid=$!
first=""
while :; do
    left=$(waiting)
    [ -z "$first" ] && [ "$left" -lt "$N" ] && first=$(now)
    [ "$left" -eq 0 ] && break
    sleep 0.05
done
t1=$(now)
kill -TERM "$pid"; wait "$pid" || true
awk -v n="$N" -v t0="$t0" -v f="$first" -v t1="$t1" 'BEGIN {
    printf "drained %d events in %.2f s from host start: %.0f events/s\n", n, t1 - t0, n / (t1 - t0)
    printf "from the first acknowledged batch: %.2f s, %.0f events/s\n", t1 - f, n / (t1 - f)
}'
psql -q "$SERVER" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
