// pgevents-host plugins in JavaScript: the same shape as the Rust SDK.
//
// componentize-js builds one module, so the build puts this file in front of
// your plugin's (`cat pgevents-sdk.js app.js > build/plugin.js`; the project
// `pgevents-host new NAME --lang js` writes does it in build.sh). Then:
//
//   export const handler = definePlugin({
//     name: 'greeter',
//     version: '1.0.0',
//     subscriptions: [subscribe('public', 'user_accounts', 'insert')],
//     handleEvent(event) {
//       if (typeof event.new?.name !== 'string') {
//         throw Failure.permanent(`not a user account: ${event.newRow}`);
//       }
//       log.info(`Welcome, ${event.new.name}!`, { user_id: event.new.id });
//     },
//   });
//
// The SDK computes the failing event's index: events before it are
// acknowledged, the failing one and the rest are not. `throw
// Failure.retry(...)`, `Failure.retryAfter(ms, ...)` or
// `Failure.permanent(...)` say what the host does next. Anything else thrown
// (an Error of your code, a string) is a retryable failure whose message and
// stack reach `status` and the dead letters, instead of an opaque trap.
//
// Built against the `sql-handler` world (`WORLD=sql-handler ./build.sh`,
// which adds pgevents-sdk-sql.js; the operator grants `sql`), `sql.query`,
// `sql.queryOne` and `sql.execute` run statements in the transaction that
// acknowledges the batch. A `SqlError` the handler does not catch fails the
// event: retried if trying again may help (`isTransient()`), else permanent.
//
// Built against the `publisher` world (`WORLD=publisher ./build.sh`, which
// adds pgevents-sdk-publish.js; the operator grants `publish`),
// `publish(sink, subject, payload, { key })` publishes a message for the
// event being handled, sent once its event is acknowledged.
//
// Built with the wasi:http import (`HTTP=1 ./build.sh`, which adds
// pgevents-sdk-http.js; the operator grants `http`), an `async handleEvent` may `await http.post(url, { json })` and
// `.check()` the response: 408, 429 and 5xx are retried, other non-2xx are
// permanent.

import { log as hostLog } from 'pgevents:plugin/host@0.1.1';
import { get as configGet } from 'pgevents:plugin/config@0.1.1';

const OPERATIONS = ['insert', 'update', 'delete', 'truncate'];
// The host cuts failure messages at 4096 bytes; keep the start.
const MESSAGE_MAX = 4000;

/** A subscription to `schema.table`: the operations given (default all). */
function subscribe(schema, table, ...operations) {
  let changedColumns;
  if (operations.length && typeof operations[operations.length - 1] === 'object') {
    changedColumns = operations.pop().changedColumns;
  }
  const ops = operations.length ? operations : OPERATIONS;
  for (const op of ops) {
    if (!OPERATIONS.includes(op)) {
      throw new Error(`unknown operation '${op}': use ${OPERATIONS.join(', ')}`);
    }
  }
  return { schema, table, operations: ops, changedColumns };
}

/** Throw from handleEvent: this event is not acknowledged. */
class Failure extends Error {
  constructor(message, { permanent = false, retryAfterMs = undefined } = {}) {
    super(String(message));
    this.permanent = permanent;
    this.retryAfterMs = retryAfterMs;
  }

  /** Deliver the event again on the host's backoff schedule. */
  static retry(message) {
    return new Failure(message);
  }

  /** Deliver the event again after `ms` milliseconds. */
  static retryAfter(ms, message) {
    if (!Number.isInteger(ms) || ms < 0) {
      throw new Error(`Failure.retryAfter: ms must be a non-negative integer, not ${ms}`);
    }
    // The host waits at most its retry_max anyway; a u64 must not wrap.
    return new Failure(message, { retryAfterMs: Math.min(ms, Number.MAX_SAFE_INTEGER) });
  }

  /** Retrying cannot help: the event goes to the dead letters. */
  static permanent(message) {
    return new Failure(message, { permanent: true });
  }

  /** The failure record the host reads, at event `index`. */
  record(index) {
    const disposition = this.permanent
      ? { tag: 'permanent' }
      : { tag: 'retry', val: this.retryAfterMs === undefined ? undefined : BigInt(this.retryAfterMs) };
    return { index, disposition, message: this.message.slice(0, MESSAGE_MAX) };
  }
}

/**
 * Stand-ins for the functions `names` of a part the build left out (`part.name`,
 * or `name` alone for no part): each throws an Error saying it needs `needs`.
 * The part's file replaces them (`Object.assign(part, ...)`).
 */
function missing(part, names, needs) {
  return Object.fromEntries(
    names.map((name) => [
      name,
      () => {
        throw new Error(`${part ? `${part}.` : ''}${name} needs ${needs}`);
      },
    ]),
  );
}

/** What a failed import call threw: its error value (componentize-js wraps it in `payload`). */
function importError(error) {
  return error && error.payload !== undefined ? error.payload : error;
}

/**
 * A statement that failed: `sqlstate` (`23505` unique violation, `42501`
 * insufficient privilege, `58000` the host's side) and PostgreSQL's message
 * as `detail` (`message` is both, as the failure shows it).
 * Not caught, it fails the event: retried if `isTransient()`, else permanent.
 */
class SqlError extends Error {
  constructor(sqlstate, message) {
    super(`SQLSTATE ${sqlstate}: ${message}`);
    this.name = 'SqlError';
    this.sqlstate = sqlstate;
    this.detail = message;
  }

  /** The statement broke a unique constraint: an idempotent insert already happened. */
  isUniqueViolation() {
    return this.sqlstate === '23505';
  }

  /**
   * Trying again later may succeed: a lost connection (class 08), a
   * serialization failure or deadlock (40), the server out of resources (53),
   * a cancelled statement or a shutdown (57), a system error (58; 58000 the
   * host's side), an internal error (XX), a lock not available (55P03). As
   * the Rust SDK decides.
   */
  isTransient() {
    return ['08', '40', '53', '57', '58', 'XX'].includes(this.sqlstate.slice(0, 2))
      || this.sqlstate === '55P03';
  }

  /** The failure this error is, not caught. */
  failure() {
    return this.isTransient() ? Failure.retry(this.message) : Failure.permanent(this.message);
  }
}

/**
 * `sql.query(statement, ...params)`: rows as objects by column name;
 * `sql.queryOne(...)`: the first row or undefined; `sql.execute(...)`: the
 * number of rows affected. Placeholders are `$1, $2, ...`. Built against any
 * world but `sql-handler`, each says how to get it.
 */
const sql = missing('sql', ['query', 'queryOne', 'execute'], 'the sql-handler world: build with -n sql-handler '
  + 'and pgevents-sdk-sql.js (WORLD=sql-handler ./build.sh), and ask the operator for sql = { role = "..." }');

/**
 * A whole HTTP response: `status`, `headers` (lower-case names), `body` (a
 * Uint8Array), `text()`, `json()`, and `check()`, which fails the event the
 * way a handler almost always means: 408, 429 and 5xx are retried (after
 * `Retry-After` if the server sent one), any other non-2xx is permanent.
 */
class HttpResponse {
  constructor(method, url, status, headers, body) {
    this.method = method;
    this.url = url;
    this.status = status;
    this.headers = headers;
    this.body = body;
  }

  text() {
    return new TextDecoder().decode(this.body);
  }

  json() {
    return JSON.parse(this.text());
  }

  /** This response if its status is 2xx; else throws the Failure it means. */
  check() {
    if (this.status >= 200 && this.status < 300) return this;
    const what = `${this.method} ${this.url} answered ${this.status}`;
    if (this.status === 408 || this.status === 429 || this.status >= 500) {
      // Delay-seconds only, as the Rust SDK reads it (an HTTP date is ignored).
      const after = (this.headers['retry-after'] ?? '').trim();
      if (/^\d+$/.test(after)) {
        throw Failure.retryAfter(Math.min(Number(after) * 1000, Number.MAX_SAFE_INTEGER), `${what}; retrying after ${after}s`);
      }
      throw Failure.retry(`${what}; retrying`);
    }
    throw Failure.permanent(`${what}; not retrying`);
  }
}

/**
 * `await http.post(url, { json: body, headers })`, `http.get(url)`,
 * `http.request(method, url, { body })`: see pgevents-sdk-http.js, which the
 * build adds for a component with the wasi:http import. Without it, each
 * says how to get it.
 */
const http = missing('http', ['request', 'get', 'post'], 'the wasi:http import: build without `-d http` '
  + 'and with pgevents-sdk-http.js (HTTP=1 ./build.sh), and ask the operator for http = { allow = ["host:port"] }');

/** The index in its batch of the event handleEvent is handling, if any. */
let handling;

/** The host's `send`, which pgevents-sdk-publish.js installs as `publishing.publish`. */
const publishing = missing('', ['publish'], 'the publisher world: build with -n publisher '
  + 'and pgevents-sdk-publish.js (WORLD=publisher ./build.sh), and ask the operator for publish = ["SINK"]');

/**
 * `publish(sink, subject, payload, { key, headers, event })`: a message for
 * the event being handled, recorded with its acknowledgement and sent to the
 * sink's broker once (the same `key`: in order). `payload`: a Uint8Array, a
 * string (UTF-8), or a plain object or array (JSON, BigInts exact); from
 * handleBatch, give the event's index as `event`. A refused message (a sink
 * not granted, over 1 MiB) throws an Error: a retryable failure. Call it
 * before handleEvent returns (await what publishes): a promise left running
 * would publish for whichever event is handled then.
 */
function publish(sink, subject, payload = new Uint8Array(), { key = undefined, headers = {}, event = handling } = {}) {
  if (event === undefined) throw new Error("publish outside handleEvent: give the event's index as { event }");
  let data = payload;
  if (typeof payload === 'string') data = new TextEncoder().encode(payload);
  else if (!(payload instanceof Uint8Array)) data = new TextEncoder().encode(jsonText(payload));
  const pairs = Object.entries(headers).map(([k, v]) => [String(k), String(v)]);
  const keyText = key === undefined || key === null ? undefined : String(key);
  publishing.publish(event, { sink: String(sink), subject: String(subject), key: keyText, payload: data, headers: pairs });
}

/** One row change; `new`, `old` and `key` are the rows parsed (JSON.parse). */
class Event {
  constructor(raw) {
    this.raw = raw;
    this.id = raw.id;
    this.txid = raw.position.txid;
    this.seq = raw.position.seq;
    this.operation = raw.operation;
    this.schema = raw.schema;
    this.table = raw.table;
    this.keyText = raw.key;
    this.newRow = raw.newRow;
    this.oldRow = raw.oldRow;
    this.capturedAt = raw.capturedAt;
    this.user = raw.context.user;
    this.applicationName = raw.context.applicationName;
    this.tag = raw.context.tag;
    this.attempt = raw.attempt;
  }

  get new() {
    return this.newRow === undefined ? undefined : JSON.parse(this.newRow);
  }

  get old() {
    return this.oldRow === undefined ? undefined : JSON.parse(this.oldRow);
  }

  get key() {
    return this.keyText === undefined ? undefined : JSON.parse(this.keyText);
  }
}

/** `log.info(message, { field: value })`: to the host's log. */
const log = Object.fromEntries(
  ['trace', 'debug', 'info', 'warn', 'error'].map((level) => [
    level,
    (message, fields = {}) =>
      hostLog(level, String(message), Object.entries(fields).map(([k, v]) => [String(k), String(v)])),
  ]),
);

/** The operator's value for `key` (`config = {...}` under [plugins.NAME]), or `fallback`. */
function config(key, fallback = undefined) {
  const value = configGet(key);
  return value === undefined ? fallback : value;
}

/**
 * JSON text of `value`, as JSON.stringify writes it but with BigInts as their
 * digits, exactly; a number JSON cannot hold (NaN, Infinity) or a value that
 * is not JSON (a Map, a Symbol) throws a TypeError saying so.
 */
function jsonText(value) {
  switch (typeof value) {
    case 'bigint':
      return String(value);
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`${value} has no JSON form`);
      return JSON.stringify(value);
    case 'string':
    case 'boolean':
      return JSON.stringify(value);
    default:
  }
  if (value === null) return 'null';
  if (typeof value === 'object' && typeof value.toJSON === 'function') return jsonText(value.toJSON());
  if (Array.isArray(value)) {
    return `[${value.map((v) => (v === undefined || typeof v === 'function' ? 'null' : jsonText(v))).join(',')}]`;
  }
  const proto = typeof value === 'object' ? Object.getPrototypeOf(value) : undefined;
  if (proto === Object.prototype || proto === null) {
    const members = Object.entries(value)
      .filter(([, v]) => v !== undefined && typeof v !== 'function')
      .map(([k, v]) => `${JSON.stringify(k)}:${jsonText(v)}`);
    return `{${members.join(',')}}`;
  }
  throw new TypeError(`a ${value?.constructor?.name ?? typeof value} is not JSON`);
}

/** A value as JSON (BigInts as `123n`), or as text if it is not JSON. */
function shown(value) {
  try {
    return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Anything thrown, as a failure message: an Error's name, message and stack. */
function described(error) {
  if (error instanceof Error) {
    const stack = (error.stack || '').trim();
    return `${error.name}: ${error.message}${stack ? ` (at ${stack.split('\n')[0]})` : ''}`;
  }
  return `threw ${typeof error === 'string' ? error : shown(error)}`;
}

/** A failure record the host can read, from anything thrown at event `at`. */
function toRecord(error, at, count, perEvent) {
  const malformed = (why) => ({
    index: at,
    disposition: { tag: 'permanent' },
    message: `malformed failure (${why}); throw Failure.retry/permanent/retryAfter(...) instead`,
  });
  const inBatch = (index) => Number.isInteger(index) && index >= 0 && index < count;
  if (error instanceof SqlError) error = error.failure();
  if (error && error.failure instanceof SqlError) error = { ...error, failure: error.failure.failure() };
  if (error instanceof Failure) {
    if (perEvent) return error.record(at);
    const record = error.record(0);
    record.message += ' (thrown from handleBatch without an index: throw { index, failure } to say which event failed)';
    return record;
  }
  if (error && error.failure instanceof Failure) {
    if (perEvent) return error.failure.record(at);
    return inBatch(error.index) ? error.failure.record(error.index)
      : malformed(`index ${error.index} is not an event of this ${count}-event batch`);
  }
  if (error && typeof error === 'object' && !(error instanceof Error) && 'disposition' in error) {
    // A raw WIT failure record, as the plugin world spells it.
    const d = error.disposition;
    if (!d || (d.tag !== 'permanent' && d.tag !== 'retry')) {
      return malformed(`disposition is ${shown(d)}, not { tag: 'retry' | 'permanent' }`);
    }
    if (d.tag === 'retry' && d.val !== undefined && typeof d.val !== 'bigint') {
      return malformed(`retry's val is a ${typeof d.val}, not a BigInt of milliseconds`);
    }
    if (typeof error.message !== 'string') {
      return malformed(`message is a ${typeof error.message}, not a string`);
    }
    if (perEvent) return { index: at, disposition: d, message: error.message.slice(0, MESSAGE_MAX) };
    return inBatch(error.index) ? { index: error.index, disposition: d, message: error.message.slice(0, MESSAGE_MAX) }
      : malformed(`index ${error.index} is not an event of this ${count}-event batch`);
  }
  return { index: at, disposition: { tag: 'retry', val: undefined }, message: described(error).slice(0, MESSAGE_MAX) };
}

/**
 * The handler export for a plugin: `{ name, version, batchSize, subscriptions,
 * handleEvent(event) }` — or `handleBatch(events)` for the whole batch at
 * once, throwing `{ index, failure: Failure.retry(...) }` to say which event
 * failed.
 */
function definePlugin(plugin) {
  if (typeof plugin.handleEvent !== 'function' && typeof plugin.handleBatch !== 'function') {
    throw new Error('definePlugin: give handleEvent(event) or handleBatch(events)');
  }
  const perEvent = typeof plugin.handleBatch !== 'function';
  return {
    describe() {
      return {
        name: plugin.name,
        version: plugin.version ?? '0.1.0',
        subscriptions: plugin.subscriptions ?? [],
        batchSize: plugin.batchSize ?? 0,
      };
    },

    // Async, so that a handler may await (http): componentize-js runs the
    // event loop until the call's promise settles.
    async handle(rawEvents) {
      const events = rawEvents.map((e) => new Event(e));
      let current = 0;
      try {
        if (!perEvent) {
          await plugin.handleBatch(events);
          return;
        }
        for (current = 0; current < events.length; current++) {
          handling = current;
          await plugin.handleEvent(events[current]);
        }
      } catch (error) {
        throw toRecord(error, current, events.length, perEvent);
      } finally {
        handling = undefined;
      }
    },
  };
}
