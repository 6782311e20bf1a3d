"""Test plugin: the Python SDK's `pg.sql`, built against the sql-handler
world. Each event of `public.items` writes a row of `public.audit` (item_id
primary key) and reads it back; its `note` says what else to do:

| note        | behaviour                                                           |
|-------------|---------------------------------------------------------------------|
| `duplicate` | insert item 1 again, not caught: a permanent failure (23505)        |
| `caught`    | insert item 1 again, catch the unique violation, log it and go on   |
| `forbidden` | read `public.forbidden`, which the role may not: permanent (42501)  |
| `bad-param` | pass an object as a parameter: a failure naming the parameter       |
| `types`     | send a value of each other kind, log what comes back; write nothing |
| `raise-C`   | a statement fails with SQLSTATE C, not caught                       |
"""

import datetime
import uuid
from decimal import Decimal

import pgevents_sdk as pg


class Handler(pg.Plugin):
    name = "sql-py"
    version = "1.0.0"
    subscriptions = [pg.subscribe("public", "items", pg.INSERT)]

    def handle_event(self, event: pg.Event) -> None:
        item, note = event.new["id"], event.new["note"]
        if note == "duplicate":
            pg.sql.execute("INSERT INTO public.audit (item_id) VALUES ($1)", 1)
        if note == "caught":
            try:
                pg.sql.execute("INSERT INTO public.audit (item_id) VALUES ($1)", 1)
            except pg.SqlError as e:
                pg.log.info("already recorded", unique="yes" if e.is_unique_violation() else "no", sqlstate=e.sqlstate)
        if note == "forbidden":
            pg.sql.query("SELECT * FROM public.forbidden")
        if note == "bad-param":
            pg.sql.execute("SELECT $1", object())
        if note.startswith("raise-"):
            code = note.removeprefix("raise-")
            assert code.isalnum(), code
            pg.sql.execute(f"DO $$BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END$$")
        if note == "types":
            row = pg.sql.query_one(
                "SELECT $1::float8 AS f, $2::float8 AS neg, $3::bool AS b, $4::numeric AS big, "
                "$5::int8 AS i, $6::timestamptz AS t, $7::uuid AS u, $8::jsonb AS j",
                1.5, -0.0, True, 2**70, -(2**63),
                datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc),
                uuid.UUID(int=1), {"k": Decimal("12345678901234567890.125"), "t": (1, None)},
            )
            pg.log.info("types", **{k: f"{type(v).__name__}:{v!r}" for k, v in row.items()})
            return
        n = pg.sql.execute(
            "INSERT INTO public.audit (item_id, note, qty, doc, raw) VALUES ($1, $2, $3, $4, $5)",
            item, note, Decimal("12345678901234567890.125"), {"k": [1, "x", None], "d": Decimal("0.1")},
            b"\x00\xff",
        )
        row = pg.sql.query_one(
            "SELECT item_id, note, qty, doc, raw, item_id > 0 AS positive, NULL::int AS nothing "
            "FROM public.audit WHERE item_id = $1",
            item,
        )
        shown = {k: f"{type(v).__name__}:{v!r}" for k, v in row.items()}
        pg.log.info("row", inserted=n, **shown)
        assert pg.sql.query_one("SELECT 1 AS one WHERE false") is None
