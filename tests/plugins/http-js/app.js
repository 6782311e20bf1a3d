// Test plugin: the JavaScript SDK's `http`, built with the wasi:http import
// (plugins/build-polyglot.sh: componentize-js without `-d http`). Each event
// of `public.items` posts `{ id, note }` to the config's `url` followed by
// its `note`, checks the response and logs it; `note` `bad-url` posts to a
// string that is not a URL, `elsewhere` to a host the grant does not allow,
// `huge` 3 MB to that host, and `userinfo` to a URL with credentials.

export const handler = definePlugin({
  name: 'http-js',
  version: '1.0.0',
  subscriptions: [subscribe('public', 'items', 'insert')],

  async handleEvent(event) {
    const { id, note } = event.new;
    const urls = {
      'bad-url': 'not a url',
      elsewhere: 'https://elsewhere.example.com/',
      huge: 'https://elsewhere.example.com/',
      userinfo: 'https://user:secret@hooks.example.com/ok',
    };
    const url = urls[note] ?? `${config('url')}${note}`;
    const json = note === 'huge' ? { id, note, pad: 'x'.repeat(3000000) } : { id, note };
    const response = await http.post(url, { json, headers: { 'x-item': String(id) } });
    response.check();
    log.info('sent', { status: response.status, type: response.headers['content-type'], ack: response.json().ack });
  },
});
