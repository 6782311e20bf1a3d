// Test plugin: the JavaScript SDK's per-event handler on demand (built by
// plugins/build-polyglot.sh after plugin-sdk/js/pgevents-sdk.js). Each
// event's `note` column (the new row of `public.items`) says what to do:
//
// | note              | behaviour                                                  |
// |-------------------|------------------------------------------------------------|
// | `permanent`       | throw Failure.permanent                                    |
// | `retry-after`     | throw Failure.retryAfter(250, ...)                         |
// | `throw-error`     | throw new Error (an author's bug)                          |
// | `throw-string`    | throw a string                                             |
// | `bad-disposition` | throw a raw record with disposition 'permanent' (a string) |
// | `raw-record`      | throw a well-formed raw record with a wrong index          |
// | `index-failure`   | throw { index: 99, failure: Failure.retry(...) }           |
// | `sql`             | call sql, which this world (handler-only) does not have    |
// | `http`            | call http, which this build (`-d http`) does not have      |
// | `publish`         | call publish, which this world does not have               |
// | anything else     | log "event" with the note, the id and a config value       |

export const handler = definePlugin({
  name: 'sdk-js',
  version: '1.0.0',
  batchSize: 10,
  subscriptions: [subscribe('public', 'items', 'insert', 'update')],

  handleEvent(event) {
    const row = event.new ?? {};
    switch (row.note) {
      case 'permanent':
        throw Failure.permanent(`item ${row.id} cannot be handled`);
      case 'retry-after':
        throw Failure.retryAfter(250, 'downstream busy');
      case 'throw-error':
        throw new TypeError(`bad value ${row.id}`);
      case 'throw-string':
        throw 'just a string';
      case 'bad-disposition':
        throw { index: 0, disposition: 'permanent', message: 'a string for a disposition' };
      case 'raw-record':
        throw { index: 99, disposition: { tag: 'permanent' }, message: 'a raw record' };
      case 'index-failure':
        throw { index: 99, failure: Failure.retry('an index of its own') };
      case 'sql':
        sql.execute('SELECT 1');
        break;
      case 'http':
        return http.get('https://example.com/');
      case 'publish':
        publish('bus', 'subject', 'payload');
        break;
      default:
        log.info('event', { note: row.note, id: row.id, config: config('greeting', 'none') });
    }
  },
});
