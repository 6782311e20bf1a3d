#!/usr/bin/env python3
"""Every performance figure of DESIGN.md ("Numbers to beat") in one run, side by side.

Run through `./dev bench [quick]` (it builds the plugins and the release host first).
Each scenario creates and drops its own database (`pgevents_bench_*`) on the server
named by PGEVENTS_BENCH_DATABASE_URL (default postgres://postgres@localhost:5432/postgres),
prints its progress to stderr, and the program ends with ONE table on stdout:
figure, measured value, target, met or not.

  P1  single-row INSERT rate into a captured table / an identical uncaptured one:
      pgbench, 4 connections, one autocommit INSERT per transaction,
      synchronous_commit=off, same duration, runs interleaved (plain, captured,
      captured, plain). No host runs meanwhile (capture alone is measured; with
      no host waiting, writers skip the NOTIFY). For information, the full run
      also measures the pair again while a host with the no-op plugin delivers.
  P2  one INSERT ... SELECT of 100,000 rows, captured / uncaptured, median of runs.
  P1 and P2 also measure a "floor": the cheapest trigger capture there is (each
      row copied as jsonb into a side table keyed (txid, seq); see floor_table),
      to show how much of the cost is any trigger's and how much is ours.
  P3  drain of a 200,000-event backlog through the no-op plugin (tests/plugins/noop,
      batch size 1000): events/s from the first acknowledged batch and from host
      start. Timings come from the host's own per-batch debug lines
      (PGEVENTS_LOG=pgevents_host::deliver=debug), which also give the read and
      handle+ack time per batch.
  P4  commit-to-handler latency at a steady 1,000 rows/s, each row its own
      transaction (4 writer connections x 250/s, paced, server-default
      synchronous_commit). How it is observed: each writer notes the wall-clock
      time at which its autocommit INSERT returned (the commit is durable and
      visible by then); the no-op plugin, configured with log_events = "true",
      logs `handled row=ID` for each event, and the host stamps that line with
      its wall clock (microseconds) while the handler runs. Same machine, same
      clock. latency = handler stamp - commit return. This slightly flatters
      the figure (the commit became visible a little before the client saw its
      reply), so the same percentiles measured from the event's captured_at
      (the trigger's clock_timestamp(), just before the commit: an upper
      bound) are printed beside it. The first second is warm-up, not counted.
      It also counts the ticks that wrote (and the transactions they numbered)
      during 3 idle seconds before the writers start and during the run.
  P5  reload latency: bench/reload.py (file renamed into place -> first event
      handled by the new version), a few rounds; the target is for cached
      compiles, so rounds 3+ (compile cache) are judged.
  P6  host VmRSS, idle, with every plugins/*.wasm loaded (and topped up to five
      plugins with test plugins if fewer), sampled after startup settles.
  P9  publishing: a backlog of 100,000 events through the `publisher` test plugin,
      one message each to NATS JetStream (a sink with the default burst and
      linger): messages/s as the broker holds them (the stream's message count,
      polled with nats-py; a consumer in Python could not keep up), from the first
      message and from host start. P9r: the same to RabbitMQ (a durable queue on the
      default exchange, its depth polled with pika). The full run also measures NATS
      with bursts of 100 and 2,000, which the default (500) was chosen between.
  P10 commit-to-consumer latency at a steady 1,000 rows/s, written as in P4,
      through the publisher plugin (batch size 100) and a sink with the default
      linger (none), to NATS (P10) and RabbitMQ (P10r): the consumer's arrival
      time of a row's message - the time its INSERT's commit returned. The full
      run also measures NATS with linger 5 and 20 ms (the default was chosen
      from 0, 5 and 20 ms).
  P7  psycopg2-pgevents 0.2.2 (PyPI), used as its README shows (install_trigger_function,
      install_trigger, register_event_channel, then `for evt in poll(conn)`):
      its insert overhead, the time to receive a burst of rows, latency at
      1,000 rows/s measured exactly as P4, and events lost when its listener /
      our host is stopped (SIGTERM) for 5 s during a steady 1,000 rows/s run.

Python packages come from PyPI into .tools/bench-venv (pinned below: psycopg2,
psycopg2-pgevents, nats-py, pika); pgbench
comes with PostgreSQL.
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".tools" / "bench-venv"
REQUIREMENTS = ["psycopg2-binary==2.9.13", "psycopg2-pgevents==0.2.2", "nats-py==2.11.0", "pika==1.3.2"]


def ensure_venv():
    """Re-run this program inside the bench venv, creating it first if needed."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    marker = VENV / ".bench-requirements"
    wanted = "\n".join(REQUIREMENTS)
    if not python.exists() or not marker.exists() or marker.read_text() != wanted:
        print("==> installing the benchmark's Python packages into .tools/bench-venv", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
        marker.write_text(wanted)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


ensure_venv()

import psycopg2  # noqa: E402  (after the venv re-exec)
from psycopg2 import sql as pgsql  # noqa: E402

MODE = sys.argv[1] if len(sys.argv) > 1 else "full"
if MODE not in ("full", "quick"):
    raise SystemExit("usage: bench/suite.py [full|quick]")
QUICK = MODE == "quick"

SERVER = os.environ.get("PGEVENTS_BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/postgres")
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
if not TARGET_DIR.is_absolute():
    TARGET_DIR = ROOT / TARGET_DIR
HOST = TARGET_DIR / "release" / "pgevents-host"
WASM = TARGET_DIR / "wasm32-wasip2" / "release"
NOOP = WASM / "noop.wasm"
PUBLISHER = WASM / "publisher.wasm"
NATS_URL = os.environ.get("PGEVENTS_BENCH_NATS_URL", "nats://127.0.0.1:4222")
RABBITMQ_URL = os.environ.get("PGEVENTS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")

# Sizes: full about 5 minutes, quick about 2.
P1_SECONDS = 3 if QUICK else 8
P2_ROWS, P2_RUNS = 100_000, (1 if QUICK else 3)
P3_ROWS = 50_000 if QUICK else 200_000
P4_RATE, P4_SECONDS = 1000, (6 if QUICK else 20)
P5_ROUNDS = 4 if QUICK else 6
P7_BURST = 50_000 if QUICK else 200_000
P9_EVENTS = 20_000 if QUICK else 100_000
LOSS_SECONDS, LOSS_STOP_AT, LOSS_DOWN = (10, 2, 5) if QUICK else (14, 4, 5)

WORK = Path(tempfile.mkdtemp(prefix="pgevents-bench-"))
CACHE = WORK / "compile-cache"  # shared by every host of this run: compiled once by `install`
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\S+Z)\s")
HANDLED = re.compile(r"^(\S+Z)\s.*\bhandled row=(\d+)")
BATCH = re.compile(r"^(\S+Z)\s.*batch handled")


def say(message):
    print(f"\033[1m==> {message}\033[0m" if sys.stderr.isatty() else f"==> {message}", file=sys.stderr, flush=True)


def url_of(db):
    return SERVER.rsplit("/", 1)[0] + "/" + db


def connect(url):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def run_sql(url, *statements):
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            rows = None
            for s in statements:
                cur.execute(s)
                rows = cur.fetchall() if cur.description else None
            return rows
    finally:
        conn.close()


def fresh_db(name):
    run_sql(SERVER, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")
    url = url_of(name)
    run_sql(url, "CREATE TABLE bench_items (id bigserial PRIMARY KEY, name text NOT NULL, email text)")
    return url


def bulk_insert(n, table="bench_items"):
    """One statement inserting `n` rows, as every bulk scenario writes them."""
    return (f"INSERT INTO {table} (name, email) SELECT 'user ' || g, 'user' || g || '@example.com' "
            f"FROM generate_series(1, {n}) g")


def drop_db(name):
    try:
        run_sql(SERVER, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except Exception as e:  # noqa: BLE001
        say(f"could not drop {name}: {e}")


def stamp(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def plugins_dir(name, files, config=None):
    """A plugins folder with these .wasm files, and an optional host config file."""
    d = WORK / name
    d.mkdir()
    for f in files:
        shutil.copy(f, d / Path(f).name)
    cfg = None
    if config:
        cfg = WORK / f"{name}.toml"
        cfg.write_text(config)
    return d, cfg


def install(url, plugins, config=None, extra=()):
    args = [str(HOST), "install", "--database-url", url, "--plugins", str(plugins), *extra]
    if config:
        args += ["--config", str(config)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pgevents-host install failed: {out.stderr.strip()}")


class Host:
    """A release host process logging to a file."""

    def __init__(self, url, plugins, name, config=None, log="info,tokio_postgres=warn", extra=(), cache=CACHE):
        self.log_path = WORK / f"{name}.log"
        args = [str(HOST), "run", "--database-url", url, "--plugins", str(plugins),
                "--compile-cache", str(cache), *extra]
        if config:
            args += ["--config", str(config)]
        env = dict(os.environ, PGEVENTS_LOG=log, NO_COLOR="1")
        self.started = time.time()
        with open(self.log_path, "a") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, env=env)

    def lines(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.readlines()

    def wait_for(self, pattern, timeout=60):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(rx.search(line) for line in self.lines()):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"host exited ({self.proc.returncode}); log:\n{''.join(self.lines()[-20:])}")
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {pattern!r} in {self.log_path}:\n{''.join(self.lines()[-20:])}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def batch_lines(host, plugin="noop"):
    """(time, events, read_us, handle_and_ack_us) of each `batch handled` debug line."""
    out = []
    for line in host.lines():
        m = BATCH.match(line)
        if m and plugin in line:
            fields = dict(re.findall(r"(\w+)=(\d+)", line))
            out.append((stamp(m.group(1)), int(fields.get("events", 0)),
                        int(fields.get("read_us", 0)), int(fields.get("handle_and_ack_us", 0))))
    return out


def percentile(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def paced_writer(url, rate, seconds, writers=4, table="bench_items"):
    """Start `writers` threads inserting one row per autocommit transaction, together
    `rate` rows/s for `seconds`. Returns (threads, start time, results) where results
    fills with (row id, wall-clock time the commit returned)."""
    results = []
    lock = threading.Lock()
    start = time.time() + 0.2
    per_writer = rate / writers
    statement = f"INSERT INTO {table} (name, email) VALUES ('w', 'w@example.com') RETURNING id"

    def run(k):
        conn = connect(url)
        cur = conn.cursor()
        mine = []
        i = 0
        while True:
            due = start + (i + k / writers) / per_writer
            if due >= start + seconds:
                break
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            try:
                cur.execute(statement)
                row = cur.fetchone()[0]
                mine.append((row, time.time()))
            except psycopg2.Error as e:  # e.g. a lock wait while a trigger is re-created
                say(f"writer {k}: {e}".strip())
                conn.close()
                conn = connect(url)
                cur = conn.cursor()
            i += 1
        conn.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(writers)]
    for t in threads:
        t.start()
    return threads, start, results


def join(threads):
    for t in threads:
        t.join()


def handled_rows(log_paths):
    """Row id -> first time a `handled row=ID` line was written, and the line count."""
    first, total = {}, 0
    for path in log_paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = HANDLED.match(line)
                if m:
                    total += 1
                    row = int(m.group(2))
                    t = stamp(m.group(1))
                    if row not in first or t < first[row]:
                        first[row] = t
    return first, total


def wait_until_handled(expected, read_handled, timeout):
    """Wait until every expected id is handled, or nothing new arrives for a while."""
    deadline = time.time() + timeout
    last_count, last_change = -1, time.time()
    while time.time() < deadline:
        got = read_handled()
        if expected <= set(got):
            return got
        if len(got) != last_count:
            last_count, last_change = len(got), time.time()
        elif time.time() - last_change > 8:
            break
        time.sleep(0.25)
    return read_handled()


def latency_stats(samples_ms):
    return {"p50": percentile(samples_ms, 50), "p99": percentile(samples_ms, 99),
            "max": max(samples_ms) if samples_ms else float("nan"), "n": len(samples_ms)}


def commit_latencies(written, handled, since):
    return [1000 * (handled[row] - t) for row, t in written if t >= since and row in handled]


# --------------------------------------------------------------------------- scenarios

RESULTS = {}

# The least any trigger-based capture can cost, measured beside ours in P1 and P2:
# a copy of each row as jsonb into a side table keyed like the log (txid, seq),
# with no key, context, security definer or NOTIFY. `mode` is "row" (P1: a row
# trigger, the cheapest for one-row statements) or "statement" (P2).
def floor_table(url, mode):
    run_sql(url, """
        CREATE TABLE floor_log (txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                                seq bigserial, row_json jsonb, PRIMARY KEY (txid, seq));
        CREATE TABLE floor_items (LIKE bench_items INCLUDING ALL);
        CREATE FUNCTION floor_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO floor_log (row_json) VALUES (to_jsonb(NEW)); RETURN NULL; END $$;
        CREATE FUNCTION floor_statement() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO floor_log (row_json) SELECT to_jsonb(n) FROM floor_new n; RETURN NULL; END $$;
    """)
    if mode == "row":
        run_sql(url, "CREATE TRIGGER floor AFTER INSERT ON floor_items FOR EACH ROW EXECUTE FUNCTION floor_row()")
    else:
        run_sql(url, "CREATE TRIGGER floor AFTER INSERT ON floor_items REFERENCING NEW TABLE AS floor_new "
                     "FOR EACH STATEMENT EXECUTE FUNCTION floor_statement()")



def p1_insert_rate():
    say(f"P1: single-row insert rate, pgbench 4 connections, {P1_SECONDS}s per run, synchronous_commit=off")
    url = fresh_db("pgevents_bench_p1")
    try:
        run_sql(url, "CREATE TABLE plain_items (LIKE bench_items INCLUDING ALL)")
        floor_table(url, "row")
        d, _ = plugins_dir("p1", [NOOP])
        install(url, d)

        def rate(table):
            script = WORK / f"p1_{table}.sql"
            script.write_text(f"INSERT INTO {table} (name, email) VALUES ('user', 'user@example.com');\n")
            out = subprocess.run(
                ["pgbench", "-n", "-c", "4", "-j", "2", "-T", str(P1_SECONDS), "-f", str(script), url],
                check=True, capture_output=True, text=True,
                env=dict(os.environ, PGOPTIONS="-c synchronous_commit=off")).stdout
            tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))
            say(f"   {table}: {tps:,.0f} rows/s")
            return tps

        order = ["plain_items", "bench_items", "floor_items"]
        order = order if QUICK else order + order[::-1]
        runs = {table: [] for table in order}
        for table in order:
            runs[table].append(rate(table))
        plain, captured = statistics.mean(runs["plain_items"]), statistics.mean(runs["bench_items"])
        floor = statistics.mean(runs["floor_items"])
        RESULTS["P1"] = {"plain": plain, "captured": captured, "ratio": captured / plain,
                         "floor_ratio": floor / plain}
        if not QUICK:
            # For information: the same while a host delivers every captured row
            # (it shares the 2 cores, and while it waits writers also NOTIFY).
            host = Host(url, d, "p1_host")
            try:
                host.wait_for(r"partition acquired", 120)
                served = rate("bench_items")
                again = rate("plain_items")
            finally:
                host.stop()
            RESULTS["P1"]["served_ratio"] = served / again
    finally:
        drop_db("pgevents_bench_p1")


def p2_bulk_insert(table_setup=None, label="P2"):
    say(f"{label}: {P2_ROWS:,}-row single-statement insert, captured / plain, {P2_RUNS} run(s)")
    url = fresh_db("pgevents_bench_p2")
    try:
        run_sql(url, "CREATE TABLE plain_items (LIKE bench_items INCLUDING ALL)")
        if table_setup is None:
            d, _ = plugins_dir(f"{label.lower()}_bulk", [NOOP])
            install(url, d)
            floor_table(url, "statement")
        else:
            table_setup(url)
        conn = connect(url)
        cur = conn.cursor()

        def timed(table):
            t0 = time.perf_counter()
            cur.execute(bulk_insert(P2_ROWS, table))
            return 1000 * (time.perf_counter() - t0)

        plain, captured, floor = [], [], []
        for _ in range(P2_RUNS):
            plain.append(timed("plain_items"))
            captured.append(timed("bench_items"))
            if table_setup is None:
                floor.append(timed("floor_items"))
            say(f"   plain {plain[-1]:.0f} ms, captured {captured[-1]:.0f} ms"
                + (f", floor {floor[-1]:.0f} ms" if floor else ""))
        conn.close()
        p, c = statistics.median(plain), statistics.median(captured)
        r = {"plain_ms": p, "captured_ms": c, "ratio": c / p}
        if floor:
            r["floor_ratio"] = statistics.median(floor) / p
        return r
    finally:
        drop_db("pgevents_bench_p2")


def p3_drain():
    say(f"P3: drain of a {P3_ROWS:,}-event backlog through the no-op plugin")
    url = fresh_db("pgevents_bench_p3")
    try:
        d, _ = plugins_dir("p3", [NOOP])
        install(url, d)
        # A first run registers the plugin and fills the compile cache, so "from host
        # start" below is a restart (no compile), as in production.
        warm = Host(url, d, "p3_warm")
        warm.wait_for(r"partition acquired", 120)
        warm.stop()
        run_sql(url, bulk_insert(P3_ROWS))
        txid, seq = run_sql(url, "SELECT txid::text, seq FROM pgevents.events ORDER BY txid DESC, seq DESC LIMIT 1")[0]
        conn = connect(url)
        cur = conn.cursor()
        done_sql = ("SELECT count(*) FROM pgevents.cursors c JOIN pgevents.commits k ON k.txid = %s::xid8 "
                    "WHERE c.plugin = 'noop' AND (c.ord, c.seq) >= (k.ord, %s)")
        host = Host(url, d, "p3", log="info,tokio_postgres=warn,pgevents_host::deliver=debug,"
                                       "pgevents_host::runtime=debug")
        t0 = host.started
        try:
            while True:
                cur.execute(done_sql, (txid, seq))
                if cur.fetchone()[0] > 0:
                    break
                if host.proc.poll() is not None or time.time() - t0 > 300:
                    raise RuntimeError("host stopped or drain took > 300 s:\n" + "".join(host.lines()[-20:]))
                time.sleep(0.02)
            t_seen = time.time()
        finally:
            host.stop()
            conn.close()
        batches = batch_lines(host)
        r = {"n": P3_ROWS}
        if batches and sum(b[1] for b in batches) >= P3_ROWS:
            first, last = batches[0][0], batches[-1][0]
            r["from_start"] = P3_ROWS / (last - t0)
            r["from_first"] = (P3_ROWS - batches[0][1]) / (last - first) if last > first else float("nan")
            r["batches"] = len(batches)
            r["read_ms"] = statistics.median(b[2] for b in batches) / 1000
            r["handle_ack_ms"] = statistics.median(b[3] for b in batches) / 1000
            r["batch_events"] = statistics.median(b[1] for b in batches)
            r["startup_s"] = first - t0
            calls = [dict(re.findall(r"(\w+)=(\d+)", line)) for line in host.lines()
                     if "plugin call" in line and "plugin=noop" in line]
            if calls:
                r["instantiate_us"] = statistics.median(int(c.get("instantiate_us", 0)) for c in calls)
                r["call_us"] = statistics.median(int(c.get("call_us", 0)) for c in calls)
            r["source"] = "host per-batch log"
        else:  # the debug line changed: fall back to when the poll saw the cursor at the end
            r["from_start"] = P3_ROWS / (t_seen - t0)
            r["source"] = "cursor poll (no per-batch debug lines found)"
        say(f"   {r}")
        RESULTS["P3"] = r
    finally:
        drop_db("pgevents_bench_p3")


LOG_EVENTS = '[plugins.noop]\nconfig = { log_events = "true" }\n'


def p4_latency():
    say(f"P4: commit-to-handler latency at {P4_RATE} rows/s for {P4_SECONDS}s (4 writers, one row per commit)")
    url = fresh_db("pgevents_bench_p4")
    try:
        d, cfg = plugins_dir("p4", [NOOP], LOG_EVENTS)
        install(url, d, cfg)
        host = Host(url, d, "p4", cfg, log="info,tokio_postgres=warn,pgevents_host::deliver=debug")
        try:
            host.wait_for(r"partition acquired|plugin (loaded|started)", 60)
            time.sleep(0.5)
            # What ticking costs: a tick that numbers transactions writes one
            # ticker row and a row per transaction; an idle one writes nothing.
            ticker = "SELECT ticks, last_ord FROM pgevents.ticker"
            idle0, t0 = run_sql(url, ticker)[0], time.time()
            time.sleep(3)
            idle1, t1 = run_sql(url, ticker)[0], time.time()
            threads, start, written = paced_writer(url, P4_RATE, P4_SECONDS)
            join(threads)
            load1, t2 = run_sql(url, ticker)[0], time.time()
            achieved = len(written) / P4_SECONDS
            handled = wait_until_handled({r for r, _ in written}, lambda: handled_rows([host.log_path])[0], 60)
        finally:
            host.stop()
        lat = commit_latencies(written, handled, start + 1.0)
        captured = {int(r): float(t) for r, t in run_sql(
            url, "SELECT (pk->>'id')::bigint, extract(epoch FROM captured_at) FROM pgevents.events")}
        lat_cap = [1000 * (handled[r] - captured[r]) for r, t in written
                   if t >= start + 1.0 and r in handled and r in captured]
        r = {"commit": latency_stats(lat), "captured": latency_stats(lat_cap), "rate": achieved,
             "missing": len({r for r, _ in written} - set(handled)),
             "ticks_idle_per_s": (idle1[0] - idle0[0]) / (t1 - t0),
             "ticks_per_s": (load1[0] - idle1[0]) / (t2 - t1),
             "numbered_per_s": (load1[1] - idle1[1]) / (t2 - t1)}
        batches = [b for b in batch_lines(host) if b[0] >= start + 1.0]
        if batches:
            r["batches"] = {"n": len(batches), "events": statistics.mean(b[1] for b in batches),
                            "read_ms": statistics.median(b[2] for b in batches) / 1000,
                            "handle_ack_ms": statistics.median(b[3] for b in batches) / 1000,
                            "read_p99_ms": percentile([b[2] for b in batches], 99) / 1000,
                            "handle_ack_p99_ms": percentile([b[3] for b in batches], 99) / 1000}
        say(f"   {r}")
        RESULTS["P4"] = r
    finally:
        drop_db("pgevents_bench_p4")


def p5_reload():
    say(f"P5: reload latency, bench/reload.py {P5_ROUNDS}")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "reload.py"), str(P5_ROUNDS)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        say("   " + line)
    if out.returncode != 0:
        raise RuntimeError(f"bench/reload.py failed ({out.returncode}): {out.stderr[-2000:]}")
    rounds = [(int(m.group(1)), m.group(3) is not None) for m in
              re.finditer(r"first event handled after (\d+) ms( \(first load[^)]*\)| \((compile cache)\))",
                          out.stdout)]
    cached = [ms for ms, c in rounds if c]
    compiled = [ms for ms, c in rounds if not c]
    if not rounds:
        raise RuntimeError("could not read bench/reload.py's output:\n" + out.stdout)
    RESULTS["P5"] = {"cached": cached, "compiled": compiled}


def inspect(wasm):
    out = subprocess.run([str(HOST), "inspect", "--json", str(wasm)], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def create_subscribed_tables(url, manifest):
    """Create every table a manifest subscribes to (shape does not matter while idle)."""
    for sub in manifest.get("subscriptions", []):
        schema, table = sub.get("schema"), sub.get("table")
        if not schema or not table:
            continue
        columns = {"name", "email", "note", "status"} | set(sub.get("changed_columns") or sub.get("changed-columns") or [])
        cols = pgsql.SQL(", ").join(pgsql.SQL("{} text").format(pgsql.Identifier(c)) for c in sorted(columns) if c != "id")
        conn = connect(url)
        with conn.cursor() as cur:
            cur.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(schema)))
            cur.execute(pgsql.SQL("CREATE TABLE IF NOT EXISTS {}.{} (id bigserial PRIMARY KEY, {})").format(
                pgsql.Identifier(schema), pgsql.Identifier(table), cols))
        conn.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def p6_memory():
    """Idle RSS: every plugins/*.wasm (the examples, whatever languages they are in), and
    five Rust plugins. Each set is started twice: with an empty compile cache (the host
    compiles every plugin) and again with the cache filled (a restart)."""
    examples = sorted((ROOT / "plugins").glob("*.wasm"))
    rust = [ROOT / "plugins" / "greeter.wasm", ROOT / "plugins" / "audit.wasm"] + \
        [WASM / f"{n}.wasm" for n in ("noop", "recorder", "filtered")]
    sets = [("plugins/*.wasm", examples), ("5 Rust plugins", [f for f in rust if f.exists()])]
    RESULTS["P6"] = []
    for k, (label, files) in enumerate(sets):
        names = [f.stem for f in files]
        say(f"P6: idle host memory with {len(files)} plugins ({', '.join(names)})")
        url = fresh_db("pgevents_bench_p6")
        try:
            config = ""
            for f in files:
                m = inspect(f)
                if f.stem == "webhook" or (m and m.get("name") == "webhook"):
                    # The webhook example subscribes to the tables in its config and needs the http grant.
                    config += ('[plugins.webhook]\nhttp = { allow = ["127.0.0.1"] }\n'
                               'config = { url = "http://127.0.0.1:9/", tables = "public.bench_items" }\n')
                elif m:
                    create_subscribed_tables(url, m)
            d, cfg = plugins_dir(f"p6_{k}", files, config or None)
            # Quick mode starts once, with a compile cache kept between runs (.tools/),
            # so only its first run compiles; the full run measures both starts.
            cache = ROOT / ".tools" / "bench-compile-cache" if QUICK else WORK / f"p6_cache_{k}"
            r = {"label": label, "plugins": names}
            for run in (("warm",) if QUICK else ("cold", "warm")):
                host = Host(url, d, f"p6_{k}_{run}", cfg, cache=cache)
                try:
                    t0 = time.time()
                    deadline = t0 + 300
                    while time.time() < deadline and host.proc.poll() is None:
                        if len(re.findall(r"partition acquired", "".join(host.lines()))) >= len(files):
                            break
                        time.sleep(0.2)
                    ready = time.time() - t0
                    time.sleep(3)  # settle
                    if host.proc.poll() is not None:
                        raise RuntimeError("host exited:\n" + "".join(host.lines()[-20:]))
                    samples = []
                    for _ in range(6):
                        samples.append(rss_kib(host.proc.pid))
                        time.sleep(0.5)
                    r["loaded"] = run_sql(url, "SELECT count(*) FROM pgevents.plugins WHERE active")[0][0]
                finally:
                    host.stop()
                r[run] = max(samples) / 1024
                r[f"{run}_ready_s"] = ready
                say(f"   {run} start: ready after {ready:.1f} s, {r['loaded']} plugins active, "
                    f"VmRSS {r[run]:.1f} MiB")
            RESULTS["P6"].append(r)
        finally:
            drop_db("pgevents_bench_p6")


# psycopg2-pgevents: its README's listener, with the handler writing "row_id time" per event.
LISTENER = r'''
import sys, time
from psycopg2 import connect
from psycopg2_pgevents.trigger import install_trigger, install_trigger_function
from psycopg2_pgevents.event import poll, register_event_channel

connection = connect(dsn=sys.argv[1])
connection.autocommit = True
install_trigger_function(connection)
install_trigger(connection, "bench_items")
register_event_channel(connection)
out = open(sys.argv[2], "a")
print("listening", flush=True)
while True:
    lines = []
    for evt in poll(connection):
        lines.append(f"{evt.row_id} {time.time():.6f}\n")
    if lines:
        out.write("".join(lines))
        out.flush()
'''


class Listener:
    def __init__(self, url, out_path):
        script = WORK / "listener.py"
        script.write_text(LISTENER)
        self.out_path = out_path
        self.proc = subprocess.Popen([sys.executable, str(script), url, str(out_path)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError("psycopg2-pgevents listener did not start")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


def listener_rows(path):
    first = {}
    total = 0
    if path.exists():
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    total += 1
                    row, t = int(parts[0]), float(parts[1])
                    first.setdefault(row, t)
    return first, total


def install_psycopg2_pgevents(url):
    from psycopg2_pgevents.trigger import install_trigger, install_trigger_function
    conn = connect(url)
    install_trigger_function(conn)
    install_trigger(conn, "bench_items")
    conn.close()


def p7_other():
    say("P7: psycopg2-pgevents 0.2.2, the same scenarios")
    r = {}
    RESULTS["P7"] = r
    # Insert overhead of its row trigger (one NOTIFY per row), as P2.
    r["bulk"] = p2_bulk_insert(install_psycopg2_pgevents, "P7/P2")

    # Burst: it has no log, so a backlog built while no listener runs is simply lost;
    # the fair throughput figure is a burst of rows inserted while its listener listens.
    say(f"P7: burst of {P7_BURST:,} rows in one statement, psycopg2-pgevents listener connected")
    url = fresh_db("pgevents_bench_p7")
    try:
        out = WORK / "p7_burst.txt"
        listener = Listener(url, out)
        try:
            t0 = time.time()
            run_sql(url, bulk_insert(P7_BURST))
            t_commit = time.time()
            deadline = time.time() + 300
            while time.time() < deadline:
                got, _ = listener_rows(out)
                if len(got) >= P7_BURST:
                    break
                time.sleep(0.2)
        finally:
            listener.stop()
        got, _ = listener_rows(out)
        times = sorted(got.values())
        r["burst"] = {"n": len(got), "insert_s": t_commit - t0,
                      "from_commit": len(got) / (times[-1] - t_commit) if times else 0,
                      "from_first": (len(got) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0}
        say(f"   {r['burst']}")
    finally:
        drop_db("pgevents_bench_p7")

    # The same burst into pgevents-host, running and idle when the statement commits.
    say(f"P7: the same burst of {P7_BURST:,} rows into pgevents-host (running, no-op plugin)")
    url = fresh_db("pgevents_bench_p7")
    try:
        d, _ = plugins_dir("p7_burst_ours", [NOOP])
        install(url, d)
        host = Host(url, d, "p7_burst_ours", log="info,tokio_postgres=warn,pgevents_host::deliver=debug")
        try:
            host.wait_for(r"partition acquired", 120)
            run_sql(url, bulk_insert(P7_BURST))
            t_commit = time.time()
            deadline = time.time() + 300
            while time.time() < deadline and sum(b[1] for b in batch_lines(host)) < P7_BURST:
                time.sleep(0.1)
        finally:
            host.stop()
        batches = batch_lines(host)
        if sum(b[1] for b in batches) >= P7_BURST:
            r["burst_ours"] = P7_BURST / (batches[-1][0] - t_commit)
        say(f"   {r.get('burst_ours', 0):,.0f} events/s from commit")
    finally:
        drop_db("pgevents_bench_p7")

    say(f"P7: psycopg2-pgevents latency at {P4_RATE} rows/s for {P4_SECONDS}s (as P4)")
    url = fresh_db("pgevents_bench_p7")
    try:
        out = WORK / "p7_latency.txt"
        listener = Listener(url, out)
        try:
            time.sleep(0.5)
            threads, start, written = paced_writer(url, P4_RATE, P4_SECONDS)
            join(threads)
            handled = wait_until_handled({x for x, _ in written}, lambda: listener_rows(out)[0], 60)
        finally:
            listener.stop()
        r["latency"] = latency_stats(commit_latencies(written, handled, start + 1.0))
        r["latency_rate"] = len(written) / P4_SECONDS
        say(f"   {r['latency']}")
    finally:
        drop_db("pgevents_bench_p7")

    r["loss_theirs"] = loss_run("theirs")
    r["loss_ours"] = loss_run("ours")


def loss_run(which):
    """Steady 1k rows/s; the consumer is stopped (SIGTERM) for LOSS_DOWN s, then restarted."""
    name = "psycopg2-pgevents listener" if which == "theirs" else "pgevents-host"
    say(f"P7: {name} stopped for {LOSS_DOWN}s during a {LOSS_SECONDS}s run at {P4_RATE} rows/s")
    url = fresh_db("pgevents_bench_p7")
    try:
        if which == "theirs":
            paths = [WORK / "p7_loss_a.txt", WORK / "p7_loss_b.txt"]
            start_consumer = [lambda: Listener(url, paths[0]), lambda: Listener(url, paths[1])]
            read = lambda: listener_rows(paths[0])[0] | listener_rows(paths[1])[0]  # noqa: E731
            lines = lambda: listener_rows(paths[0])[1] + listener_rows(paths[1])[1]  # noqa: E731
        else:
            d, cfg = plugins_dir(f"p7_loss_{which}", [NOOP], LOG_EVENTS)
            install(url, d, cfg)
            hosts = []

            def start_host(k):
                h = Host(url, d, f"p7_loss_{k}", cfg)
                hosts.append(h)
                h.wait_for(r"partition acquired", 60)
                return h

            start_consumer = [lambda: start_host(0), lambda: start_host(1)]
            read = lambda: handled_rows([h.log_path for h in hosts])[0]  # noqa: E731
            lines = lambda: handled_rows([h.log_path for h in hosts])[1]  # noqa: E731
        consumer = start_consumer[0]()
        try:
            threads, start, written = paced_writer(url, P4_RATE, LOSS_SECONDS)
            time.sleep(max(0.0, start + LOSS_STOP_AT - time.time()))
            consumer.stop(signal.SIGTERM)
            say(f"   stopped at {time.time() - start:.1f}s")
            time.sleep(max(0.0, start + LOSS_STOP_AT + LOSS_DOWN - time.time()))
            consumer = start_consumer[1]()
            say(f"   running again at {time.time() - start:.1f}s")
            join(threads)
            handled = wait_until_handled({x for x, _ in written}, read, 60)
        finally:
            consumer.stop()
        ids = {x for x, _ in written}
        res = {"written": len(ids), "handled": len(ids & set(handled)), "lost": len(ids - set(handled)),
               "duplicates": lines() - len(handled)}
        say(f"   {res}")
        return res
    finally:
        drop_db("pgevents_bench_p7")


# --------------------------------------------------------------------------- the table

def table():
    rows = []

    def row(fig, measured, target, met):
        status = "—" if met is None else ("met" if met else "NOT MET")
        rows.append((fig, measured, target, status))

    def err(key, fig, target):
        if key in ERRORS:
            row(fig, f"error: {ERRORS[key]}"[:60], target, False)
            return True
        return key not in RESULTS  # not run (PGEVENTS_BENCH_ONLY)

    if not err("P1", "P1 single-row insert rate, captured / plain", ">= 0.85"):
        p = RESULTS["P1"]
        row("P1 single-row insert rate, captured / plain",
            f"{p['ratio']:.2f} ({p['captured']:,.0f} / {p['plain']:,.0f} rows/s)", ">= 0.85", p["ratio"] >= 0.85)
        row("   floor: minimal row trigger copying to_jsonb", f"{p['floor_ratio']:.2f}", "(info)", None)
        if "served_ratio" in p:
            row("   the same while a host delivers them", f"{p['served_ratio']:.2f}", "(info)", None)
    if not err("P2", f"P2 {P2_ROWS // 1000}k-row insert, captured / plain", "<= 2.0x"):
        p = RESULTS["P2"]
        row(f"P2 {P2_ROWS // 1000}k-row insert, captured / plain",
            f"{p['ratio']:.2f}x ({p['captured_ms']:.0f} / {p['plain_ms']:.0f} ms)", "<= 2.0x", p["ratio"] <= 2.0)
        if "floor_ratio" in p:
            row("   floor: minimal statement trigger copying to_jsonb", f"{p['floor_ratio']:.2f}x", "(info)", None)
    if not err("P3", "P3 drain, no-op plugin", ">= 100k/s"):
        p = RESULTS["P3"]
        if "from_first" in p:
            row(f"P3 drain {p['n'] // 1000}k backlog, no-op, from 1st ack", f"{p['from_first']:,.0f} events/s",
                ">= 100,000/s", p["from_first"] >= 100_000)
        row(f"P3 drain {p['n'] // 1000}k backlog, from host start", f"{p['from_start']:,.0f} events/s", "(info)", None)
    if not err("P4", "P4 commit-to-handler latency", "p50 <= 5 ms, p99 <= 25 ms"):
        p = RESULTS["P4"]
        c, u = p["commit"], p["captured"]
        row(f"P4 latency at {p['rate']:,.0f} rows/s, p50", f"{c['p50']:.2f} ms (from captured_at {u['p50']:.2f})",
            "<= 5 ms", c["p50"] <= 5)
        row("P4 latency, p99", f"{c['p99']:.2f} ms (from captured_at {u['p99']:.2f})", "<= 25 ms", c["p99"] <= 25)
        row("P4 latency, max", f"{c['max']:.1f} ms ({c['n']:,} events, {p['missing']} unhandled)", "(info)", None)
        if "ticks_per_s" in p:
            row("   ticking: writing ticks/s idle; under load", f"{p['ticks_idle_per_s']:.1f}; {p['ticks_per_s']:,.0f} "
                f"(+ {p['numbered_per_s']:,.0f} transaction rows/s)", "(info)", None)
    if not err("P5", "P5 reload: file renamed -> new version handles", "<= 500 ms"):
        p = RESULTS["P5"]
        if p["cached"]:
            worst = max(p["cached"])
            row("P5 reload -> first event by new version", f"median {statistics.median(p['cached']):.0f} ms, "
                f"worst {worst} ms ({len(p['cached'])} cached)", "<= 500 ms", worst <= 500)
        if p["compiled"]:
            row("   first load of those bytes (compiles)", f"worst {max(p['compiled'])} ms", "(info)", None)
    if not err("P6", "P6 host RSS, idle", "<= 64 MB"):
        for p in RESULTS["P6"]:
            cold = f" (cold start {p['cold']:.1f})" if "cold" in p else ""
            row(f"P6 RSS idle, {p['label']} ({p['loaded']} active)", f"{p['warm']:.1f} MiB{cold}",
                "<= 64 MB", p["warm"] <= 64)
    for key, who in (("P9", "NATS JetStream"), ("P9r", "RabbitMQ")):
        if not err(key, f"{key} publish to {who}", ">= 20k/s"):
            p = RESULTS[key]
            if "from_first" in p:
                row(f"{key} publish {p['n'] // 1000}k backlog to {who}, from 1st message",
                    f"{p['from_first']:,.0f} messages/s ({p['duplicates']} dup)", ">= 20,000/s",
                    p["from_first"] >= 20_000)
            row(f"{key} publish {p['n'] // 1000}k backlog, from host start", f"{p['from_start']:,.0f} messages/s",
                "(info)", None)
    for key in ("P9b100", "P9b2000"):
        if not err(key, key, "(info)"):
            p = RESULTS[key]
            row(f"   the same to NATS with burst {p['burst']}", f"{p.get('from_first', 0):,.0f} messages/s",
                "(info)", None)
    for key, who in (("P10", "NATS JetStream"), ("P10r", "RabbitMQ")):
        if not err(key, f"{key} commit-to-consumer latency, {who}", "p50 <= 10 ms, p99 <= 50 ms"):
            p = RESULTS[key]
            c = p["commit"]
            row(f"{key} commit to {who} consumer at {p['rate']:,.0f}/s, p50", f"{c['p50']:.2f} ms", "<= 10 ms",
                c["p50"] <= 10)
            row(f"{key} p99 / max", f"{c['p99']:.2f} / {c['max']:.1f} ms ({c['n']:,} messages, {p['missing']} missing)",
                "<= 50 ms", c["p99"] <= 50 and p["missing"] == 0)
    for key in ("P10l5", "P10l20"):
        if not err(key, key, "(info)"):
            c = RESULTS[key]["commit"]
            row(f"   the same to NATS with linger {RESULTS[key]['linger']}", f"p50 {c['p50']:.2f} / p99 {c['p99']:.2f} ms",
                "(info)", None)
    err("P7", "P7 psycopg2-pgevents 0.2.2", "(info)")
    if "P7" in RESULTS:  # possibly partial
        p = RESULTS["P7"]
        ours3, ours4 = RESULTS.get("P3", {}), RESULTS.get("P4", {}).get("commit")
        if "bulk" in p:
            b = p["bulk"]
            row("P7 psycopg2-pgevents: 100k insert, trig / plain", f"{b['ratio']:.2f}x ({b['captured_ms']:.0f} / "
                f"{b['plain_ms']:.0f} ms)", f"ours {RESULTS['P2']['ratio']:.2f}x" if "P2" in RESULTS else "", None)
        if "burst" in p:
            b = p["burst"]
            row(f"P7 psycopg2-pgevents: {P7_BURST // 1000}k-row burst, listening",
                f"{b['from_commit']:,.0f} ev/s from commit",
                f"ours {p['burst_ours']:,.0f} ev/s" if "burst_ours" in p else "", None)
        if "latency" in p:
            lt = p["latency"]
            row("P7 psycopg2-pgevents: latency p50 / p99 / max",
                f"{lt['p50']:.2f} / {lt['p99']:.2f} / {lt['max']:.1f} ms",
                f"ours {ours4['p50']:.2f} / {ours4['p99']:.2f} / {ours4['max']:.1f}" if ours4 else "", None)
        for key, who in (("loss_theirs", "psycopg2-pgevents"), ("loss_ours", "pgevents-host")):
            if key in p:
                x = p[key]
                row(f"P7 {who}: stopped {LOSS_DOWN}s in a steady run", f"lost {x['lost']:,} of {x['written']:,}, "
                    f"{x['duplicates']} dup", "lose 0" if who == "pgevents-host" else "(info)",
                    x["lost"] == 0 if who == "pgevents-host" else None)
    widths = [max(len(r[i]) for r in rows + [("figure", "measured", "target", "status")]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print()
    print(f"pgevents-host performance ({MODE} run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, PostgreSQL {run_sql(SERVER, 'SHOW server_version')[0][0].split()[0]}; "
          f"1-min load average {LOAD_AT_START:.1f} at start, {os.getloadavg()[0]:.1f} at end)")
    print(line(("figure", "measured", "target", "status")))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))
    print()
    if "P4" in RESULTS and "batches" in RESULTS["P4"]:
        b = RESULTS["P4"]["batches"]
        print(f"P4 per batch ({b['n']:,} batches, {b['events']:.1f} events each on average): read median "
              f"{b['read_ms']:.2f} ms (p99 {b['read_p99_ms']:.2f}), handle+ack median {b['handle_ack_ms']:.2f} ms "
              f"(p99 {b['handle_ack_p99_ms']:.2f})")
    for p in RESULTS.get("P6", []):
        cold = f"{p['cold_ready_s']:.1f} s cold, " if "cold_ready_s" in p else ""
        print(f"P6 {p['label']}: {', '.join(p['plugins'])}; ready (every partition acquired) after "
              f"{cold}{p['warm_ready_s']:.1f} s with the compile cache")
    if "P3" in RESULTS and "read_ms" in RESULTS["P3"]:
        p = RESULTS["P3"]
        print(f"P3 per batch (median of {p['batches']} batches of {p['batch_events']:.0f}): "
              f"read {p['read_ms']:.1f} ms, handle+ack {p['handle_ack_ms']:.1f} ms; "
              f"host start to first ack {p['startup_s']:.2f} s")
        if "instantiate_us" in p:
            print(f"P3 fresh instance per batch: instantiating takes {p['instantiate_us']:.0f} us, "
                  f"the handle call {p['call_us']:.0f} us (medians): reusing instances could save "
                  f"at most {100 * p['instantiate_us'] / (1000 * p['handle_ack_ms']):.1f}% of a batch")


class Consumer:
    """A consumer of `kind` (nats | rabbitmq) on `subject`, in a thread of its own: the
    wall-clock time each message arrived, by the row id in its JSON payload."""

    def __init__(self, kind, subject):
        self.kind, self.subject = kind, subject
        self.first = {}  # row id -> first arrival
        self.count = 0
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"the {kind} consumer did not start: {self.error}")

    def got(self, body):
        now = time.time()
        self.count += 1
        try:
            row = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            return
        self.first.setdefault(row, now)

    def run(self):
        try:
            if self.kind == "nats":
                self.run_nats()
            else:
                self.run_rabbitmq()
        except Exception as e:  # noqa: BLE001
            self.error = e
            self.ready.set()

    def run_nats(self):
        import asyncio
        import nats

        async def main():
            nc = await nats.connect(NATS_URL)
            await nc.subscribe(self.subject, cb=self._nats)
            await nc.flush()
            self.ready.set()
            while not self.done.is_set():
                await asyncio.sleep(0.05)
            await nc.close()

        asyncio.run(main())

    async def _nats(self, message):
        self.got(message.data)

    def run_rabbitmq(self):
        import pika
        conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        ch = conn.channel()
        ch.queue_declare(self.subject, exclusive=True)
        ch.basic_consume(self.subject, lambda c, m, p, body: self.got(body), auto_ack=True)
        self.ready.set()
        while not self.done.is_set():
            conn.process_data_events(time_limit=0.05)
        conn.close()

    def stop(self):
        self.done.set()
        self.thread.join(10)


def sink_config(kind, subject, burst=None, linger=None, batch_size=1000):
    url = NATS_URL if kind == "nats" else RABBITMQ_URL
    extra = (f"burst = {burst}\n" if burst else "") + (f'linger = "{linger}"\n' if linger else "")
    return (f'[sinks.bus]\nkind = "{kind}"\nurl = "{url}"\n{extra}\n'
            f'[plugins.publisher]\npublish = ["bus"]\nbatch_size = {batch_size}\n'
            f'config = {{ subject = "{subject}", tables = "public.bench_items" }}\n')


def nats_stream(name):
    """Create (and return a deleter of) a JetStream stream on `name.>`."""
    import asyncio
    import nats

    async def with_js(action):
        nc = await nats.connect(NATS_URL)
        try:
            return await action(nc.jetstream())
        finally:
            await nc.close()

    asyncio.run(with_js(lambda js: js.add_stream(name=name, subjects=[f"{name}.>"], duplicate_window=120.0)))

    def delete():
        try:
            asyncio.run(with_js(lambda js: js.delete_stream(name)))
        except Exception as e:  # noqa: BLE001
            say(f"could not delete stream {name}: {e}")
    return delete


def broker_count(kind, stream, queue):
    """Messages the broker holds: the JetStream stream's count, or the RabbitMQ queue's depth."""
    if kind == "nats":
        import asyncio
        import nats

        async def count():
            nc = await nats.connect(NATS_URL)
            try:
                return (await nc.jetstream().stream_info(stream)).state.messages
            finally:
                await nc.close()
        return asyncio.run(count())
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def declare_queue(queue):
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    conn.channel().queue_declare(queue, durable=True)
    conn.close()


def delete_queue(queue):
    import pika
    try:
        conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        conn.channel().queue_delete(queue)
        conn.close()
    except Exception as e:  # noqa: BLE001
        say(f"could not delete queue {queue}: {e}")


def p9_publish(kind, burst=None, key=None):
    key = key or ("P9" if kind == "nats" else "P9r")
    say(f"{key}: {P9_EVENTS:,} events through a plugin publishing one message each to {kind}"
        f" (burst {burst or 'default'})")
    name = f"pgbench{os.getpid()}{key.lower()}"
    subject = f"{name}.items" if kind == "nats" else name
    url = fresh_db("pgevents_bench_p9")
    delete = nats_stream(name) if kind == "nats" else (lambda: None)
    try:
        d, cfg = plugins_dir(key.lower(), [PUBLISHER], sink_config(kind, subject, burst))
        install(url, d, cfg)
        warm = Host(url, d, f"{key.lower()}_warm", cfg)
        warm.wait_for(r"partition acquired", 120)
        warm.stop()
        run_sql(url, bulk_insert(P9_EVENTS))
        if kind == "rabbitmq":  # a durable queue holds what the broker confirmed
            declare_queue(subject)
        host = Host(url, d, key.lower(), cfg)
        t0 = host.started
        first = None
        try:
            while True:
                n = broker_count(kind, name, subject)
                now = time.time()
                if n > 0 and first is None:
                    first = (now, n)
                if n >= P9_EVENTS:
                    break
                if host.proc.poll() is not None or now - t0 > 300:
                    raise RuntimeError(f"host stopped or publishing took > 300 s ({n:,} received):\n"
                                       + "".join(host.lines()[-20:]))
                time.sleep(0.05)
            t_done = time.time()
        finally:
            host.stop()
        r = {"n": P9_EVENTS, "from_start": P9_EVENTS / (t_done - t0), "kind": kind, "burst": burst,
             "duplicates": broker_count(kind, name, subject) - P9_EVENTS}
        if first and t_done > first[0]:
            r["from_first"] = (P9_EVENTS - first[1]) / (t_done - first[0])
        say(f"   {r}")
        RESULTS[key] = r
    finally:
        if kind == "rabbitmq":
            delete_queue(subject)
        delete()
        drop_db("pgevents_bench_p9")


def p10_latency(kind, linger=None, key=None):
    key = key or ("P10" if kind == "nats" else "P10r")
    say(f"{key}: commit-to-consumer latency through {kind} at {P4_RATE} rows/s for {P4_SECONDS}s"
        f" (linger {linger or 'default'})")
    name = f"pgbench{os.getpid()}{key.lower()}"
    subject = f"{name}.items" if kind == "nats" else name
    url = fresh_db("pgevents_bench_p10")
    delete = nats_stream(name) if kind == "nats" else (lambda: None)
    consumer = None
    try:
        consumer = Consumer(kind, subject)
        d, cfg = plugins_dir(key.lower(), [PUBLISHER], sink_config(kind, subject, linger=linger, batch_size=100))
        install(url, d, cfg)
        host = Host(url, d, key.lower(), cfg,
                    log="info,tokio_postgres=warn,pgevents_host::outbox=debug,pgevents_host::deliver=debug")
        try:
            host.wait_for(r"flushing the outbox to this sink", 60)
            host.wait_for(r"partition acquired", 60)
            time.sleep(0.5)
            threads, start, written = paced_writer(url, P4_RATE, P4_SECONDS)
            join(threads)
            expected = {r for r, _ in written}
            wait_until_handled(expected, lambda: consumer.first, 60)
        finally:
            host.stop()
        lat = commit_latencies(written, dict(consumer.first), start + 1.0)
        r = {"commit": latency_stats(lat), "rate": len(written) / P4_SECONDS, "kind": kind, "linger": linger,
             "missing": len(expected - set(consumer.first))}
        say(f"   {r}")
        RESULTS[key] = r
    finally:
        if consumer:
            consumer.stop()
        delete()
        drop_db("pgevents_bench_p10")


ERRORS = {}
LOAD_AT_START = 0.0


def main():
    if not HOST.exists():
        raise SystemExit(f"{HOST} is missing: run `cargo build --release -p pgevents-host` (./dev bench does)")
    if not NOOP.exists():
        raise SystemExit(f"{NOOP} is missing: run ./dev build-plugins (./dev bench does)")
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench is missing (it comes with PostgreSQL's client packages)")
    global LOAD_AT_START
    LOAD_AT_START = os.getloadavg()[0]  # other work on the machine skews every figure: shown with the table
    started = time.time()
    only = set(os.environ.get("PGEVENTS_BENCH_ONLY", "").replace(",", " ").split())
    steps = [("P1", p1_insert_rate), ("P2", lambda: RESULTS.__setitem__("P2", p2_bulk_insert())),
             ("P3", p3_drain), ("P4", p4_latency), ("P5", p5_reload), ("P6", p6_memory), ("P7", p7_other),
             ("P9", lambda: p9_publish("nats")), ("P9r", lambda: p9_publish("rabbitmq")),
             ("P10", lambda: p10_latency("nats")), ("P10r", lambda: p10_latency("rabbitmq"))]
    if not QUICK:  # what the burst and linger defaults were chosen from
        steps += [("P9b100", lambda: p9_publish("nats", 100, "P9b100")),
                  ("P9b2000", lambda: p9_publish("nats", 2000, "P9b2000")),
                  ("P10l5", lambda: p10_latency("nats", "5ms", "P10l5")),
                  ("P10l20", lambda: p10_latency("nats", "20ms", "P10l20"))]
    try:
        for key, step in steps:
            if only and key not in only:
                continue
            try:
                step()
            except Exception as e:  # noqa: BLE001  (one failing scenario must not hide the others)
                say(f"{key} failed: {e}")
                ERRORS[key] = str(e).splitlines()[0] if str(e) else type(e).__name__
        table()
        say(f"done in {time.time() - started:.0f} s")
    finally:
        if os.environ.get("PGEVENTS_BENCH_KEEP"):
            say(f"kept the hosts' logs in {WORK}")
        else:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
