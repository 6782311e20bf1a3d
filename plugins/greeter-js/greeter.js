// Welcomes every new user account: the Rust `greeter` example, in JavaScript.
//
// Built by `plugins/build-polyglot.sh` with componentize-js against the
// `handler-only` world of wit/plugin.wit (no database access).

import { log } from 'pgevents:plugin/host@0.1.1';

// The exported `handler` interface: one function per WIT function, camelCased.
export const handler = {
  describe() {
    return {
      name: 'greeter-js',
      version: '1.0.0',
      subscriptions: [
        { schema: 'public', table: 'user_accounts', operations: ['insert'] },
      ],
      batchSize: 100,
    };
  },

  // Returning is `ok`; throwing a `failure` record is `err(failure)`.
  handle(events) {
    events.forEach((event, i) => {
      // Retrying cannot fix a row that doesn't decode, so it is permanent.
      const user = JSON.parse(event.newRow ?? 'null');
      if (!Number.isInteger(user?.id) || typeof user?.name !== 'string') {
        throw {
          index: i,
          disposition: { tag: 'permanent' },
          message: `event ${event.id}: new row of ${event.schema}.${event.table} is not a user account: ${event.newRow}`,
        };
      }
      // A stand-in for a flaky downstream service: ask for the host's backoff.
      if (user.name === 'retry-me') {
        throw {
          index: i,
          disposition: { tag: 'retry', val: undefined },
          message: `event ${event.id}: asked to be retried (attempt ${event.attempt})`,
        };
      }
      log('info', `Welcome, ${user.name}!`, [['user_id', String(user.id)]]);
    });
  },
};
