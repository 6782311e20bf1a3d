// Test plugin: the JavaScript SDK's `http`, built with the wasi:http import
// (plugins/build-polyglot.sh: componentize-js without `-d http`). Each event
// of `public.items` posts `{ id, note }` to the config's `url` followed by
// its `note`, checks the response and logs it; `note` `bad-url` posts to a
// string that is not a URL, and `elsewhere` to a host the grant does not allow.

export const handler = definePlugin({
  name: 'http-js',
  version: '1.0.0',
  subscriptions: [subscribe('public', 'items', 'insert')],

  async handleEvent(event) {
    const { id, note } = event.new;
    const url = note === 'bad-url' ? 'not a url'
      : note === 'elsewhere' ? 'https://elsewhere.example.com/'
        : `${config('url')}${note}`;
    const response = await http.post(url, { json: { id, note }, headers: { 'x-item': String(id) } });
    response.check();
    log.info('sent', { status: response.status, type: response.headers['content-type'], ack: response.json().ack });
  },
});
