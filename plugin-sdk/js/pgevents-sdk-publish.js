// `publish` for JavaScript plugins built against the `publisher` (or
// `plugin`) world: the build puts this file after pgevents-sdk.js
// (`WORLD=publisher ./build.sh` in a project `pgevents-host new NAME --lang js`
// wrote; the operator grants `publish = ["SINK"]`). Then, in a handler:
//
//   publish('bus', `orders.${row.id}`, { id: row.id, total: row.total }, { key: String(row.id) });

import { send as publishSend } from 'pgevents:plugin/publish@0.1.1';

publishing.publish = (event, message) => {
  try {
    publishSend(event, message);
  } catch (error) {
    throw new Error(`publishing to ${message.sink} (${message.subject}): ${importError(error)}`);
  }
};
