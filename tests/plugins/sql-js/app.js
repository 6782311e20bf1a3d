// Test plugin: the JavaScript SDK's `sql`, built against the sql-handler
// world (plugins/build-polyglot.sh puts pgevents-sdk.js and
// pgevents-sdk-sql.js in front). Each event of `public.items` writes a row
// of `public.audit` (item_id primary key) and reads it back; its `note` says
// what else to do:
//
// | note        | behaviour                                                          |
// |-------------|--------------------------------------------------------------------|
// | `duplicate` | insert item 1 again, not caught: a permanent failure (23505)       |
// | `caught`    | insert item 1 again, catch the unique violation, log it and go on  |
// | `forbidden` | read `public.forbidden`, which the role may not: permanent (42501) |
// | `bad-param` | pass a Map as a parameter: a failure naming the parameter          |
// | `types`     | send a value of each other kind, log what comes back; write nothing|
// | `raise-C`   | a statement fails with SQLSTATE C, not caught                      |

/** A value with its type, to check what the SDK gave the handler. */
function typed(v) {
  const kind = v === null ? 'null' : v instanceof Uint8Array ? 'Uint8Array' : typeof v;
  const text = v instanceof Uint8Array ? Array.from(v).join(',') : typeof v === 'bigint' ? `${v}n` : JSON.stringify(v);
  return `${kind}:${text}`;
}

export const handler = definePlugin({
  name: 'sql-js',
  version: '1.0.0',
  subscriptions: [subscribe('public', 'items', 'insert')],

  handleEvent(event) {
    const { id, note } = event.new;
    if (note === 'duplicate') sql.execute('INSERT INTO public.audit (item_id) VALUES ($1)', 1);
    if (note === 'caught') {
      try {
        sql.execute('INSERT INTO public.audit (item_id) VALUES ($1)', 1);
      } catch (e) {
        if (!(e instanceof SqlError)) throw e;
        log.info('already recorded', { unique: e.isUniqueViolation() ? 'yes' : 'no', sqlstate: e.sqlstate });
      }
    }
    if (note === 'forbidden') sql.query('SELECT * FROM public.forbidden');
    if (note === 'bad-param') sql.execute('SELECT $1', new Map());
    if (note.startsWith('raise-')) {
      const code = note.slice('raise-'.length);
      if (!/^[0-9A-Z]+$/.test(code)) throw new Error(`bad code ${code}`);
      sql.execute(`DO $$BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '${code}'; END$$`);
    }
    if (note === 'types') {
      const row = sql.queryOne(
        'SELECT $1::float8 AS f, $2::float8 AS neg, $3::bool AS b, $4::numeric AS big, '
          + '$5::int8 AS i, $6::timestamptz AS t, $7::uuid AS u, $8::jsonb AS j',
        1.5, -0, true, 2n ** 70n, -(2n ** 63n), new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678)),
        '00000000-0000-0000-0000-000000000001', { k: 12345678901234567890n, t: [1, null] },
      );
      log.info('types', Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typed(v)])));
      return;
    }
    const n = sql.execute(
      'INSERT INTO public.audit (item_id, note, qty, doc, raw) VALUES ($1, $2, $3, $4, $5)',
      id, note, '12345678901234567890.125', { k: [1, 'x', null], d: 0.1 }, new Uint8Array([0, 255]),
    );
    const row = sql.queryOne(
      'SELECT item_id, note, qty, doc, raw, item_id > 0 AS positive, NULL::int AS nothing, '
        + '9007199254740993::int8 AS big FROM public.audit WHERE item_id = $1',
      id,
    );
    log.info('row', { inserted: n, ...Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typed(v)])) });
    if (sql.queryOne('SELECT 1 AS one WHERE false') !== undefined) throw new Error('queryOne found a row in none');
  },
});
