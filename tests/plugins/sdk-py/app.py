"""Test plugin: the Python SDK's per-event handler on demand. Each event's
`note` column (the new row of `public.items`) says what to do:

| note              | behaviour                                                   |
|-------------------|-------------------------------------------------------------|
| `permanent`       | raise pg.Failure.permanent                                  |
| `retry-after`     | raise pg.Failure.retry_after(250, ...)                      |
| `value-error`     | raise ValueError (an author's bug)                          |
| `return-err`      | return Err(Failure(...)) instead of raising it              |
| `bad-disposition` | raise Err(Failure(0, "permanent", ...)): a malformed one    |
| `return-value`    | return True                                                 |
| `sql`             | call pg.sql, which this world (handler-only) does not have  |
| `http`            | call pg.http, which this world does not have either         |
| `publish`         | call pg.publish, nor this one                               |
| anything else     | log "event" with the note, the id and the exact `qty` type  |
"""

from componentize_py_types import Err
from wit_world.imports.types import Disposition_Permanent, Failure

import pgevents_sdk as pg


class Handler(pg.Plugin):
    name = "sdk-py"
    version = "1.0.0"
    batch_size = 10
    subscriptions = [pg.subscribe("public", "items", pg.INSERT, pg.UPDATE)]

    def handle_event(self, event: pg.Event):
        note = (event.new or {}).get("note")
        if note == "permanent":
            raise pg.Failure.permanent(f"item {event.new['id']} cannot be handled")
        if note == "retry-after":
            raise pg.Failure.retry_after(250, "downstream busy")
        if note == "value-error":
            raise ValueError(f"bad value {event.new['id']}")
        if note == "return-err":
            return Err(Failure(0, Disposition_Permanent(), "returned, not raised"))
        if note == "bad-disposition":
            raise Err(Failure(0, "permanent", "a string for a disposition"))
        if note == "return-value":
            return True
        if note == "sql":
            pg.sql.execute("SELECT 1")
        if note == "http":
            pg.http.get("https://example.com/")
        if note == "publish":
            pg.publish("bus", "subject", "payload")
        pg.log.info("event", note=note, id=event.new["id"], config=pg.config("greeting", "none"))
