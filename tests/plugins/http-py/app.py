"""Test plugin: the Python SDK's `pg.http`, built against the http-handler
world of wit/http. Each event of `public.items` posts `{id, note}` to the
config's `url` followed by its `note`, checks the response and logs it;
`note` `bad-url` posts to a string that is not a URL, `elsewhere` to a
host the grant does not allow, `huge` 3 MB to that host, and `userinfo` to a
URL with credentials. (The same as the JavaScript `http-js`.)"""

import pgevents_sdk as pg


class Handler(pg.Plugin):
    name = "http-py"
    version = "1.0.0"
    subscriptions = [pg.subscribe("public", "items", pg.INSERT)]

    def handle_event(self, event: pg.Event) -> None:
        item, note = event.new["id"], event.new["note"]
        body = {"id": item, "note": note}
        if note == "bad-url":
            url = "not a url"
        elif note in ("elsewhere", "huge"):
            url = "https://elsewhere.example.com/"
            if note == "huge":
                body["pad"] = "x" * 3_000_000
        elif note == "userinfo":
            url = "https://user:secret@hooks.example.com/ok"
        else:
            url = pg.config("url") + note
        response = pg.http.post(url, json=body, headers={"x-item": str(item)})
        response.check()
        pg.log.info(
            "sent",
            status=response.status,
            type=response.headers.get("content-type"),
            ack=response.json()["ack"],
        )
