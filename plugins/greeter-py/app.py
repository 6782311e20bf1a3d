"""Welcomes every new user account: the Rust `greeter` example, in Python.

Built by `plugins/build-polyglot.sh` with componentize-py against the
`handler-only` world of wit/plugin.wit (no database access).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Disposition_Permanent,
    Disposition_Retry,
    Event,
    Failure,
    Manifest,
    Operation,
    Subscription,
)


class Handler(exports.Handler):
    def describe(self) -> Manifest:
        return Manifest(
            name="greeter-py",
            version="1.0.0",
            subscriptions=[
                Subscription("public", "user_accounts", [Operation.INSERT], None)
            ],
            batch_size=100,
        )

    def handle(self, events: list[Event]) -> None:
        for i, event in enumerate(events):
            # Retrying cannot fix a row that doesn't decode, so it is permanent.
            row = json.loads(event.new_row or "null")
            user_id = row.get("id") if isinstance(row, dict) else None
            name = row.get("name") if isinstance(row, dict) else None
            if not isinstance(user_id, int) or not isinstance(name, str):
                raise Err(Failure(
                    i,
                    Disposition_Permanent(),
                    f"event {event.id}: new row of {event.schema}.{event.table} "
                    f"is not a user account: {event.new_row}",
                ))
            # A stand-in for a flaky downstream service: ask for the host's backoff.
            if name == "retry-me":
                raise Err(Failure(
                    i,
                    Disposition_Retry(None),
                    f"event {event.id}: asked to be retried (attempt {event.attempt})",
                ))
            host.log(host.Level.INFO, f"Welcome, {name}!", [("user_id", str(user_id))])
