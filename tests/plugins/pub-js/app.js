// Test plugin: the JavaScript SDK's `publish`, built against the publisher
// world (plugins/build-polyglot.sh puts pgevents-sdk.js and
// pgevents-sdk-publish.js in front). Each event of `public.items` publishes
// `{ id, note }` to the sink `bus`, subject `items.ID`, keyed by its id (a number: the SDK makes it text);
// `note` `elsewhere` publishes to a sink not granted, and `huge` a payload
// over the host's 1 MiB limit. (The same as the Python `pub-py`.)

export const handler = definePlugin({
  name: 'pub-js',
  version: '1.0.0',
  subscriptions: [subscribe('public', 'items', 'insert')],

  handleEvent(event) {
    const { id, note } = event.new;
    const sink = note === 'elsewhere' ? 'other' : 'bus';
    const payload = note === 'huge' ? 'x'.repeat(2 << 20) : { id, note };
    publish(sink, `items.${id}`, payload, { key: id, headers: { 'x-note': note } });
  },
});
