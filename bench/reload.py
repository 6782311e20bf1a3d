#!/usr/bin/env python3
"""Reload latency: how long from a new plugin file landing in the plugins folder
(copied, then renamed into place) until the new version handles events.

A release host runs the recorder test plugin while a writer inserts a row about
every 2 ms. Each round swaps version 1.0.0 for 2.0.0 or back, and reads the
host's log for (a) the "plugin reloaded" line and (b) the first event line the
new version wrote. Prints each round and the median and worst.
Run through `./dev bench-reload [ROUNDS]`.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
SERVER = os.environ.get("PGEVENTS_BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/postgres")
DB = "pgevents_bench_reload"
URL = SERVER.rsplit("/", 1)[0] + "/" + DB
TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
HOST = os.path.join(TARGET, "release", "pgevents-host")
WASM = os.path.join(TARGET, "wasm32-wasip2", "release")
VERSIONS = {"1.0.0": os.path.join(WASM, "recorder.wasm"), "2.0.0": os.path.join(WASM, "recorder_v2.wasm")}
STAMP = re.compile(r"^(\S+Z)\s")


def psql(url, *commands):
    args = ["psql", "-qAt", url]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def stamp(line):
    """Seconds since the epoch of a log line's RFC 3339 timestamp."""
    m = STAMP.match(line)
    if not m:
        return None
    return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()


def wait_for(log_path, offset, pattern, deadline):
    """The first line at or after `offset` matching `pattern`, and its time."""
    while time.time() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            for line in f:
                if pattern.search(line):
                    return stamp(line)
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {pattern.pattern!r} in {log_path}")


def main():
    psql(SERVER, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", f"CREATE DATABASE {DB}")
    psql(URL, "CREATE TABLE items (id bigserial PRIMARY KEY, name text, note text, qty int)",
         "CREATE TABLE prices (id int PRIMARY KEY, price numeric, label text)")
    work = tempfile.mkdtemp()
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    shutil.copy(VERSIONS["1.0.0"], os.path.join(plugins, "recorder.wasm"))
    config = os.path.join(work, "host.toml")
    with open(config, "w") as f:
        f.write('[plugins.recorder]\ntables = ["public.items", "public.prices"]\n')
    log_path = os.path.join(work, "host.log")
    env = dict(os.environ, PGEVENTS_LOG="info", NO_COLOR="1")
    cache = os.path.join(work, "cache")
    with open(log_path, "w") as log:
        host = subprocess.Popen([HOST, "run", "--database-url", URL, "--plugins", plugins,
                                 "--config", config, "--compile-cache", cache],
                                stderr=log, stdout=log, env=env)
    writer = subprocess.Popen(
        ["psql", "-q", URL, "-c",
         "DO $$ BEGIN LOOP INSERT INTO items (name) VALUES ('r'); COMMIT; "
         "PERFORM pg_sleep(0.002); END LOOP; END $$"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(log_path, 0, re.compile(r"version=1\.0\.0"), time.time() + 120)
        swapped, handled, cached = [], [], []
        current = "1.0.0"
        for n in range(ROUNDS):
            target = "2.0.0" if current == "1.0.0" else "1.0.0"
            offset = os.path.getsize(log_path)
            temp = os.path.join(plugins, ".recorder.wasm.tmp")
            shutil.copy(VERSIONS[target], temp)
            t0 = time.time()
            os.rename(temp, os.path.join(plugins, "recorder.wasm"))
            deadline = t0 + 60
            t_swap = wait_for(log_path, offset, re.compile(rf"plugin reloaded.*to={re.escape(target)}|to={re.escape(target)}.*plugin reloaded"), deadline)
            t_event = wait_for(log_path, offset, re.compile(rf"\bevent\b.*version={re.escape(target)}"), deadline)
            first_time = n < 2
            (handled if not first_time else cached).append(t_event - t0)
            swapped.append(t_swap - t0)
            print(f"round {n + 1}: {current} -> {target}: serving after {1000 * (t_swap - t0):.0f} ms, "
                  f"first event handled after {1000 * (t_event - t0):.0f} ms"
                  f"{' (first load of these bytes: compiled)' if first_time else ' (compile cache)'}")
            current = target
            time.sleep(0.3)
        every = cached + handled
        print(f"reload latency, file renamed into place -> first event handled by the new version, "
              f"{len(every)} rounds: median {1000 * statistics.median(every):.0f} ms, "
              f"worst {1000 * max(every):.0f} ms"
              + (f"; with the compile cache (rounds 3+): median {1000 * statistics.median(handled):.0f} ms, "
                 f"worst {1000 * max(handled):.0f} ms" if handled else ""))
    finally:
        writer.terminate()
        host.terminate()
        host.wait()
        writer.wait()
        psql(SERVER, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
