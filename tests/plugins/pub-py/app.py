"""Test plugin: the Python SDK's `pg.publish`, built against the publisher
world. Each event of `public.items` publishes `{id, note}` to the sink
`bus`, subject `items.ID`, keyed by its id (a number: the SDK makes it text); `note` `elsewhere` publishes to
a sink not granted, and `huge` a payload over the host's 1 MiB limit. (The
same as the JavaScript `pub-js`.)"""

import pgevents_sdk as pg


class Handler(pg.Plugin):
    name = "pub-py"
    version = "1.0.0"
    subscriptions = [pg.subscribe("public", "items", pg.INSERT)]

    def handle_event(self, event: pg.Event) -> None:
        item, note = event.new["id"], event.new["note"]
        sink = "other" if note == "elsewhere" else "bus"
        payload = "x" * (2 << 20) if note == "huge" else {"id": item, "note": note}
        pg.publish(sink, f"items.{item}", payload, key=item, headers={"x-note": note})
