"""Write pgevents-host plugins in Python: the same shape as the Rust SDK.

Put this file next to your ``app.py`` and build against the ``handler-only``
world with componentize-py (``pgevents-host new NAME --lang python`` writes
such a project)::

    import pgevents_sdk as pg

    class Handler(pg.Plugin):
        name = "greeter"
        version = "1.0.0"
        subscriptions = [pg.subscribe("public", "user_accounts", pg.INSERT)]

        def handle_event(self, event: pg.Event) -> None:
            if event.new is None or "name" not in event.new:
                raise pg.Failure.permanent(f"not a user account: {event.new_row}")
            pg.log.info(f"Welcome, {event.new['name']}!", user_id=event.new["id"])

The SDK computes the failing event's index: events before it are
acknowledged, the failing one and the rest are not. ``raise
pg.Failure.retry(...)``, ``pg.Failure.retry_after(ms, ...)`` or
``pg.Failure.permanent(...)`` say what the host does next. Any other
exception is a retryable failure whose message (type, text and where it was
raised) reaches ``status`` and the dead letters. Returning anything but
``None`` is refused loudly rather than taken for success (``return
Err(...)`` would otherwise acknowledge the event).

Built against the ``sql-handler`` world (``WORLD=sql-handler ./build.sh``;
the operator grants ``sql``), ``pg.sql.query``, ``pg.sql.query_one`` and
``pg.sql.execute`` run statements in the transaction that acknowledges the
batch. A ``pg.SqlError`` the handler does not catch fails the event: retried
if trying again may help (``is_transient()``), else permanent.

Built against the ``publisher`` world (``WORLD=publisher ./build.sh``; the
operator grants ``publish``), ``pg.publish(sink, subject, payload, key=...)``
publishes a message for the event being handled, sent once its event is
acknowledged.

Built against the ``http-handler`` (or ``sql-http-handler``) world of
``wit/http`` (``WORLD=http-handler ./build.sh``; the operator grants
``http``), ``pg.http.post(url, json=body).check()`` sends a request and
fails the event as its status says: 408, 429 and 5xx are retried, other
non-2xx statuses are permanent. A refused request raises ``pg.HttpError``.
"""

import datetime
import json
import traceback
import uuid
from decimal import Decimal
from typing import Any, Iterable, Optional, Union

from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config as _config
from wit_world.imports import host as _host

# The modules of the world the plugin is built against, imported when it is
# built (componentize-py keeps only what is imported then). Next to
# wasi:http's `types`, the plugin's are `pgevents_plugin_types`.
try:
    from wit_world.imports import types as _t
except ImportError:
    from wit_world.imports import pgevents_plugin_types as _t
try:
    from wit_world.imports import sql as _wit_sql
except ImportError:
    _wit_sql = None
try:
    from wit_world.imports import publish as _wit_publish
except ImportError:
    _wit_publish = None
try:
    from wit_world.imports import outgoing_handler as _wit_outgoing
    from wit_world.imports import streams as _wit_streams
    from wit_world.imports import wasi_http_types as _wit_http
except ImportError:
    _wit_outgoing = None

INSERT = "insert"
UPDATE = "update"
DELETE = "delete"
TRUNCATE = "truncate"
ALL = (INSERT, UPDATE, DELETE, TRUNCATE)

_OPERATIONS = {
    INSERT: _t.Operation.INSERT,
    UPDATE: _t.Operation.UPDATE,
    DELETE: _t.Operation.DELETE,
    TRUNCATE: _t.Operation.TRUNCATE,
}
_NAMES = {v: k for k, v in _OPERATIONS.items()}

# The host cuts failure messages at 4096 bytes; keep the end of a traceback.
_MESSAGE_MAX = 4000


def subscribe(
    schema: str,
    table: str,
    *operations: str,
    changed_columns: Optional[Iterable[str]] = None,
) -> "_t.Subscription":
    """A subscription to ``schema.table``: the given operations (default all)
    and, with ``changed_columns``, only updates that change one of them."""
    ops = operations or ALL
    unknown = [o for o in ops if o not in _OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}: use {', '.join(ALL)}")
    return _t.Subscription(
        schema,
        table,
        [_OPERATIONS[o] for o in ops],
        list(changed_columns) if changed_columns is not None else None,
    )


class Failure(Exception):
    """Raise from ``handle_event``: this event is not acknowledged."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after_ms: Optional[int] = None):
        super().__init__(message)
        self.message = str(message)
        self.permanent = permanent
        self.retry_after_ms = retry_after_ms

    @classmethod
    def retry(cls, message: str) -> "Failure":
        """Deliver the event again on the host's backoff schedule."""
        return cls(message)

    @classmethod
    def retry_after(cls, ms: int, message: str) -> "Failure":
        """Deliver the event again after ``ms`` milliseconds."""
        if not isinstance(ms, int) or ms < 0:
            raise ValueError(f"retry_after: ms must be a non-negative int, not {ms!r}")
        # The host waits at most its retry_max anyway; a u64 must not overflow.
        return cls(message, retry_after_ms=min(ms, 2**64 - 1))

    @classmethod
    def permanent(cls, message: str) -> "Failure":
        """Retrying cannot help: the event goes to the dead letters."""
        return cls(message, permanent=True)

    def _wit(self, index: int) -> "_t.Failure":
        if self.permanent:
            disposition = _t.Disposition_Permanent()
        else:
            disposition = _t.Disposition_Retry(self.retry_after_ms)
        return _t.Failure(index, disposition, self.message[-_MESSAGE_MAX:])


def _parse(text: Optional[str]) -> Any:
    # Floats as Decimal: a numeric column keeps every digit.
    return None if text is None else json.loads(text, parse_float=Decimal)


class Event:
    """One row change. ``new``, ``old`` and ``key`` are the rows as dicts
    (numbers with a fraction as ``Decimal``, exactly); ``new_row``,
    ``old_row`` and ``key_text`` the JSON text the host sent."""

    def __init__(self, raw: "_t.Event"):
        self.raw = raw
        self.id: str = raw.id
        self.txid: int = raw.position.txid
        self.seq: int = raw.position.seq
        self.operation: str = _NAMES[raw.operation]
        self.schema: str = raw.schema
        self.table: str = raw.table
        self.new_row: Optional[str] = raw.new_row
        self.old_row: Optional[str] = raw.old_row
        self.key_text: Optional[str] = raw.key
        self.captured_at: str = raw.captured_at
        self.user: str = raw.context.user
        self.application_name: str = raw.context.application_name
        self.tag: Optional[str] = raw.context.tag
        self.attempt: int = raw.attempt
        self.new: Optional[dict] = _parse(raw.new_row)
        self.old: Optional[dict] = _parse(raw.old_row)
        self.key: Optional[dict] = _parse(raw.key)

    def __repr__(self) -> str:
        return f"Event({self.operation} {self.schema}.{self.table} id={self.id})"


class _Log:
    """``pg.log.info("message", field=value, ...)``: to the host's log."""

    def _write(self, level: "_host.Level", message: Any, fields: dict) -> None:
        _host.log(level, str(message), [(str(k), str(v)) for k, v in fields.items()])

    def trace(self, message: Any, **fields: Any) -> None:
        self._write(_host.Level.TRACE, message, fields)

    def debug(self, message: Any, **fields: Any) -> None:
        self._write(_host.Level.DEBUG, message, fields)

    def info(self, message: Any, **fields: Any) -> None:
        self._write(_host.Level.INFO, message, fields)

    def warn(self, message: Any, **fields: Any) -> None:
        self._write(_host.Level.WARN, message, fields)

    def error(self, message: Any, **fields: Any) -> None:
        self._write(_host.Level.ERROR, message, fields)


log = _Log()


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """The operator's value for ``key`` (``config = {...}`` under
    ``[plugins.NAME]`` in the host's config file), or ``default``."""
    value = _config.get(key)
    return default if value is None else value


class SqlError(Exception):
    """A statement that failed: ``sqlstate`` (``23505`` unique violation,
    ``42501`` insufficient privilege, ``58000`` the host's side) and
    PostgreSQL's ``message``. Not caught, it fails the event: retried if
    ``is_transient()``, else permanent."""

    def __init__(self, sqlstate: str, message: str):
        super().__init__(f"SQLSTATE {sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message

    def is_unique_violation(self) -> bool:
        """The statement broke a unique constraint: an idempotent insert already happened."""
        return self.sqlstate == "23505"

    def is_transient(self) -> bool:
        """Trying again later may succeed: a lost connection (class 08), a
        serialization failure or deadlock (40), the server out of resources
        (53), a cancelled statement or a shutdown (57), a system error (58;
        58000 the host's side), an internal error (XX), a lock not available
        (55P03). As the Rust SDK decides."""
        return self.sqlstate[:2] in ("08", "40", "53", "57", "58", "XX") or self.sqlstate == "55P03"

    def _wit(self, index: int) -> "_t.Failure":
        disposition = _t.Disposition_Retry(None) if self.is_transient() else _t.Disposition_Permanent()
        return _t.Failure(index, disposition, str(self)[-_MESSAGE_MAX:])


_S64 = range(-(2**63), 2**63)


class _Sql:
    """``pg.sql``: statements with ``$1, $2, ...`` placeholders. Parameters:
    None, bool, int, float, str, Decimal (exact, as text), bytes, dict, list
    or tuple (JSON, Decimals exact), date/time and UUID (as text; PostgreSQL
    casts text to any column type). Rows come back as dicts by column name:
    int, float, str (numeric as its exact decimal text, uuid and timestamps
    as the host renders them: ``Decimal(row["total"])`` for arithmetic),
    bool, bytes, None, and json columns parsed (fractions as Decimal)."""

    def _wit(self) -> Any:
        if _wit_sql is None:
            raise RuntimeError(
                "pg.sql needs the sql-handler world: build with `-w sql-handler` "
                "(WORLD=sql-handler ./build.sh) and ask the operator for `sql = { role = \"...\" }`"
            )
        return _wit_sql

    def _param(self, sql: Any, value: Any, n: int) -> Any:
        if value is None:
            return sql.Value_Null()
        if isinstance(value, bool):
            return sql.Value_Boolean(value)
        if isinstance(value, int):
            # int() and str.__str__: an IntEnum or a (str, Enum) member is its value.
            return sql.Value_Int(int(value)) if value in _S64 else sql.Value_Text(int.__repr__(value))
        if isinstance(value, float):
            return sql.Value_Float(float(value))
        if isinstance(value, str):
            return sql.Value_Text(str.__str__(value))
        if isinstance(value, (Decimal, uuid.UUID)):
            return sql.Value_Text(str(value))
        if isinstance(value, (bytes, bytearray, memoryview)):
            return sql.Value_Bytes(bytes(value))
        if isinstance(value, (dict, list, tuple)):
            try:
                return sql.Value_Json(_dumps(value))
            except (TypeError, ValueError) as error:
                raise TypeError(f"pg.sql: parameter ${n} is not JSON: {error}") from None
        if isinstance(value, (datetime.date, datetime.time)):
            return sql.Value_Text(value.isoformat())
        raise TypeError(
            f"pg.sql: parameter ${n} is {type(value).__name__}; pass None, bool, int, float, str, "
            "Decimal, bytes, dict/list (JSON), a date/time or a UUID"
        )

    def _call(self, name: str, statement: str, params: tuple) -> Any:
        sql = self._wit()
        values = [self._param(sql, v, n) for n, v in enumerate(params, 1)]
        try:
            return getattr(sql, name)(statement, values)
        except Err as err:
            raise SqlError(err.value.sqlstate, err.value.message) from None

    def query(self, statement: str, *params: Any) -> list:
        """Run a statement that returns rows: a list of dicts."""
        result = self._call("query", statement, params)
        return [
            {column: _result_value(v) for column, v in zip(result.columns, row)}
            for row in result.rows
        ]

    def query_one(self, statement: str, *params: Any) -> Optional[dict]:
        """The first row of a statement's result, or None if it returned none."""
        rows = self.query(statement, *params)
        return rows[0] if rows else None

    def execute(self, statement: str, *params: Any) -> int:
        """Run a statement; the number of rows it affected."""
        return self._call("execute", statement, params)


sql = _Sql()


class PublishError(Exception):
    """A message the host refused (a sink not granted, a payload over 1 MiB).
    Not caught, it fails the event, retried: the operator can fix the grant."""

    def _wit(self, index: int) -> "_t.Failure":
        return _t.Failure(index, _t.Disposition_Retry(None), str(self)[-_MESSAGE_MAX:])


# The index in its batch of the event handle_event is handling, if any.
_handling: Optional[int] = None


def publish(
    sink: str,
    subject: str,
    payload: Any = b"",
    *,
    key: Optional[str] = None,
    headers: Optional[dict] = None,
    event: Optional[int] = None,
) -> None:
    """Publish a message for the event being handled: the host records it in
    its outbox with the event's acknowledgement, and sends it to the sink's
    broker once (messages with the same ``key`` in order). ``payload``:
    bytes, str (UTF-8), or anything else as JSON (Decimals exact). From
    ``handle_batch``, give the event's index as ``event``. Needs the
    publisher (or plugin) world and the operator's ``publish`` grant."""
    if _wit_publish is None:
        raise RuntimeError(
            "pg.publish needs the publisher world: build with `-w publisher` "
            "(WORLD=publisher ./build.sh) and ask the operator for `publish = [\"SINK\"]`"
        )
    index = _handling if event is None else event
    if index is None:
        raise RuntimeError("pg.publish outside handle_event: give the event's index as event=")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode()
    else:
        # dict, list, a number, True, None: as JSON.
        data = _dumps(payload).encode()
    message = _wit_publish.Message(
        str(sink),
        str(subject),
        None if key is None else str(key),
        data,
        [(str(k), str(v)) for k, v in (headers or {}).items()],
    )
    try:
        _wit_publish.send(index, message)
    except Err as err:
        raise PublishError(f"publishing to {sink} ({subject}): {err.value}") from None


class HttpError(Exception):
    """A request that got no response: refused by the operator's allow-list
    (``denied``), a network error, or a URL that is not http(s). Not caught,
    it fails the event: retried, except for a bad URL (permanent)."""

    def __init__(self, message: str, *, denied: bool = False, invalid: bool = False):
        super().__init__(message)
        self.denied = denied
        self.invalid = invalid

    def _wit(self, index: int) -> "_t.Failure":
        disposition = _t.Disposition_Permanent() if self.invalid else _t.Disposition_Retry(None)
        return _t.Failure(index, disposition, str(self)[-_MESSAGE_MAX:])


class Response:
    """A whole HTTP response: ``status``, ``headers`` (lower-case names),
    ``body`` (bytes), ``text()``, ``json()`` and ``check()``."""

    def __init__(self, method: str, url: str, status: int, headers: dict, body: bytes):
        self.method, self.url, self.status, self.headers, self.body = method, url, status, headers, body

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body, parse_float=Decimal)

    def check(self) -> "Response":
        """This response if its status is 2xx; else raises the failure it
        means: 408, 429 and 5xx are retried (after ``Retry-After`` seconds if
        the server sent them), any other status is permanent."""
        if 200 <= self.status < 300:
            return self
        what = f"{self.method} {self.url} answered {self.status}"
        if self.status in (408, 429) or self.status >= 500:
            # Delay-seconds only, as the Rust SDK reads it (an HTTP date is ignored).
            after = self.headers.get("retry-after", "").strip()
            if after.isascii() and after.isdigit():
                raise Failure.retry_after(int(after) * 1000, f"{what}; retrying after {after}s")
            raise Failure.retry(f"{what}; retrying")
        raise Failure.permanent(f"{what}; not retrying")


_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# wasi:http streams take at most this much per blocking write.
_CHUNK = 4096


class _Http:
    """``pg.http``: ``pg.http.post(url, json=body, headers={...})``,
    ``pg.http.get(url)``, ``pg.http.request(method, url, body=b"...")``: a
    request through the operator's allow-list and its whole ``Response``.
    Needs the http-handler (or sql-http-handler) world: ``WORLD=http-handler
    ./build.sh``, and the operator's ``http`` grant."""

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Optional[dict] = None,
        json: Any = None,
        body: Union[bytes, str, None] = None,
    ) -> Response:
        if _wit_outgoing is None:
            raise RuntimeError(
                "pg.http needs the http-handler world: build with `-d wit/http -w http-handler` "
                "(WORLD=http-handler ./build.sh) and ask the operator for `http = { allow = [\"host:port\"] }`"
            )
        method = method.upper()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"{method} {url}: not an http(s) URL", invalid=True)
        if parts.username is not None or parts.password is not None:
            raise HttpError(
                f"{method} {parts.hostname}: a URL with credentials is not sent; "
                "put them in an authorization header",
                invalid=True,
            )
        sent = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        if json is not None:
            body = _dumps(json)
            sent.setdefault("content-type", "application/json")
        if isinstance(body, str):
            data = body.encode()
        elif body is None or isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body or b"")
        else:
            raise TypeError(f"pg.http: body is {type(body).__name__}; give bytes or str (or json=)")
        h = _wit_http
        try:
            fields = h.Fields.from_list([(k, v.encode()) for k, v in sent.items()])
        except Err as e:
            raise HttpError(f"{method} {url}: a header is not allowed ({type(e.value).__name__})", invalid=True)
        request = h.OutgoingRequest(fields)
        try:
            request.set_method(getattr(h, f"Method_{method.title()}")() if method in _METHODS else h.Method_Other(method))
            request.set_scheme(h.Scheme_Https() if parts.scheme == "https" else h.Scheme_Http())
            request.set_authority(parts.netloc)
            request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        except Err:
            raise HttpError(f"{method} {url}: not a valid method or URL", invalid=True) from None
        outgoing = request.body()
        try:
            future = _wit_outgoing.handle(request, None)
        except Err as e:
            raise _http_error(method, url, e.value) from None
        sent_body = True
        try:
            with outgoing.write() as stream:
                for i in range(0, len(data), _CHUNK):
                    stream.blocking_write_and_flush(data[i : i + _CHUNK])
            h.OutgoingBody.finish(outgoing, None)
        except Err:
            # The response (or its error) says why; the body alone cannot.
            sent_body = False
        with future:
            with future.subscribe() as ready:
                ready.block()
            result = future.get()
        inner = result.value
        if isinstance(inner, Err):
            raise _http_error(method, url, inner.value)
        if not sent_body:
            inner.value.__exit__(None, None, None)
            raise HttpError(f"{method} {url}: the request body could not be sent")
        with inner.value as response:
            status = response.status()
            with response.headers() as fields:
                received: dict = {}
                for k, v in fields.entries():
                    try:
                        text = v.decode("utf-8")
                    except UnicodeDecodeError:
                        text = v.decode("latin-1")
                    # Repeated headers joined, as fetch joins them.
                    received[k.lower()] = f"{received[k.lower()]}, {text}" if k.lower() in received else text
            incoming = response.consume()
            chunks = []
            with incoming.stream() as stream:
                while True:
                    try:
                        chunks.append(stream.blocking_read(65536))
                    except Err as e:
                        if isinstance(e.value, _wit_streams.StreamError_Closed):
                            break
                        raise HttpError(f"{method} {url}: the response body broke off") from None
            h.IncomingBody.finish(incoming)
        return Response(method, url, status, received, b"".join(chunks))

    def get(self, url: str, **options: Any) -> Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> Response:
        return self.request("POST", url, **options)


def _http_error(method: str, url: str, code: Any) -> HttpError:
    name = type(code).__name__.removeprefix("ErrorCode_")
    if name == "HttpRequestDenied":
        return HttpError(f"{method} {url}: refused by the host: its http grant does not allow it "
            "(under `pgevents-host test`: or no --http rule answers it)", denied=True)
    return HttpError(f"{method} {url}: {name}")


http = _Http()


def _dumps(value: Any) -> str:
    """JSON text of ``value``, a Decimal with every digit (json.dumps would
    refuse it, or round it through float)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} has no JSON form")
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(_key(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    if isinstance(value, uuid.UUID):
        return json.dumps(str(value))
    if isinstance(value, (datetime.date, datetime.time)):
        return json.dumps(value.isoformat())
    return json.dumps(value, allow_nan=False)


def _key(key: Any) -> str:
    """A dict key as json.dumps writes it."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise TypeError(f"a key is {type(key).__name__}; keys must be str, int, float, bool or None")


def _result_value(value: Any) -> Any:
    kind = type(value).__name__
    if kind == "Value_Null":
        return None
    if kind == "Value_Json":
        return json.loads(value.value, parse_float=Decimal)
    return value.value


def _described(error: BaseException) -> str:
    """An exception as a failure message: its type, text and where it came from."""
    where = traceback.extract_tb(error.__traceback__)
    place = f" (at {where[-1].filename}:{where[-1].lineno} in {where[-1].name})" if where else ""
    return f"{type(error).__name__}: {error}{place}"


def _checked(failure: Any, index: int, count: int, at: Optional[int] = None) -> "_t.Failure":
    """A WIT failure the plugin raised itself (``raise Err(Failure(...))``),
    or a clear failure saying what is wrong with it. ``at``: the event it
    is about (a per-event handler cannot know its index in the batch)."""
    def malformed(why: str) -> "_t.Failure":
        return _t.Failure(
            index if at is None else at,
            _t.Disposition_Permanent(),
            f"malformed failure ({why}); raise pg.Failure.retry/permanent/retry_after(...) instead",
        )

    if _wit_sql is not None and isinstance(failure, _wit_sql.SqlError):
        # A raw `wit_world.imports.sql` call's error, not caught.
        return SqlError(failure.sqlstate, failure.message)._wit(index if at is None else at)
    if not isinstance(failure, _t.Failure):
        return malformed(f"Err carries {type(failure).__name__}, not a Failure")
    if not isinstance(failure.disposition, (_t.Disposition_Retry, _t.Disposition_Permanent)):
        return malformed(
            f"disposition is {failure.disposition!r} ({type(failure.disposition).__name__}), "
            "not Disposition_Retry(ms or None) or Disposition_Permanent()"
        )
    if at is None and (not isinstance(failure.index, int) or not 0 <= failure.index < count):
        return malformed(f"index {failure.index!r} is not an event of this {count}-event batch")
    if not isinstance(failure.message, str):
        return malformed(f"message is {type(failure.message).__name__}, not str")
    if at is not None:
        return _t.Failure(at, failure.disposition, failure.message)
    return failure


# What a handler raises that says its own disposition (each has `_wit(index)`).
_RAISED = (Failure, SqlError, HttpError, PublishError)


class Plugin(exports.Handler):
    """Subclass as ``class Handler(pg.Plugin)`` in ``app.py``: set ``name``,
    ``version``, ``subscriptions`` (and ``batch_size``: 0, the host's
    default), and write ``handle_event`` — or ``handle_batch`` for the whole
    batch at once."""

    name: str = ""
    version: str = "0.1.0"
    batch_size: int = 0
    subscriptions: list = []

    def describe(self) -> "_t.Manifest":
        return _t.Manifest(self.name, self.version, list(self.subscriptions), self.batch_size)

    def handle_event(self, event: Event) -> None:
        raise NotImplementedError("write handle_event(self, event) in your Handler")

    def handle_batch(self, events: list) -> None:
        global _handling
        try:
            for i, event in enumerate(events):
                _handling = i
                self._handle_one(event, i, len(events))
        finally:
            _handling = None

    def _handle_one(self, event: Event, i: int, count: int) -> None:
        try:
            result = self.handle_event(event)
        except _RAISED as f:
            raise Err(f._wit(i))
        except Err as err:
            raise Err(_checked(err.value, i, count, at=i))
        except Exception as error:
            message = _described(error)
            raise Err(_t.Failure(i, _t.Disposition_Retry(None), message[-_MESSAGE_MAX:]))
        if result is not None:
            raise Err(_result_failure(result, i, count))

    def handle(self, events: list) -> None:
        wrapped = [Event(e) for e in events]
        # Only the default handle_batch knows which event failed; from an
        # overridden one, a failure without an index is at the first event,
        # so that nothing unprocessed is acknowledged.
        try:
            self.handle_batch(wrapped)
        except Err as err:
            raise Err(_checked(err.value, 0, len(events)))
        except _RAISED as f:
            failure = f._wit(0)
            failure.message += " (raised from handle_batch, which cannot say which event: raise Err(Failure(index, ...)))"
            raise Err(failure)
        except Exception as error:
            message = _described(error)
            raise Err(_t.Failure(0, _t.Disposition_Retry(None), message[-_MESSAGE_MAX:]))


def _result_failure(result: Any, index: int, count: int) -> "_t.Failure":
    if isinstance(result, Err):
        return _checked(result.value, index, count, at=index)
    if isinstance(result, Failure):
        return result._wit(index)
    return _t.Failure(
        index,
        _t.Disposition_Permanent(),
        f"handle_event returned {result!r}; return None when the event is handled, "
        "or raise pg.Failure.retry/permanent(...)",
    )
