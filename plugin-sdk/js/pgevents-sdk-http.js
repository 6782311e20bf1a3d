// `http` for JavaScript plugins built with the wasi:http import: the build
// puts this file after pgevents-sdk.js and builds without `-d http`
// (`HTTP=1 ./build.sh` in a project `pgevents-host new NAME --lang js`
// wrote; the operator grants `http = { allow = ["host:port"] }`). Then, in an
// `async handleEvent`:
//
//   const response = await http.post(url, { json: { id: row.id }, headers: { 'x-key': key } });
//   response.check(); // 408, 429, 5xx: retried (after Retry-After); other non-2xx: permanent
//   log.info('sent', { status: response.status, body: response.text() });
//
// A request the grant refuses, or a network error, throws an Error: a
// retryable failure with its message (`pgevents-host test` and the host's
// log say why it was refused). A URL that is not http(s) is permanent.

Object.assign(http, {
  async request(method, url, { headers = {}, json = undefined, body = undefined } = {}) {
    let parsed;
    try {
      parsed = new URL(url);
    } catch {
      parsed = undefined;
    }
    if (!parsed || !['http:', 'https:'].includes(parsed.protocol)) {
      throw Failure.permanent(`${method} ${url}: not an http(s) URL`);
    }
    if (parsed.username || parsed.password) {
      throw Failure.permanent(
        `${method} ${parsed.host}: a URL with credentials is not sent; put them in an authorization header`,
      );
    }
    // A plain object, [name, value] pairs or a Headers.
    const sent = new Headers(headers);
    if (json !== undefined) {
      body = jsonText(json);
      if (!sent.has('content-type')) sent.set('content-type', 'application/json');
    }
    let response;
    try {
      response = await fetch(url, { method, headers: sent, body });
    } catch (error) {
      throw new Error(`${method} ${url}: ${error && error.message ? error.message : error}`);
    }
    const received = {};
    response.headers.forEach((value, name) => {
      received[name.toLowerCase()] = value;
    });
    return new HttpResponse(method, url, response.status, received, new Uint8Array(await response.arrayBuffer()));
  },
  get(url, options) {
    return http.request('GET', url, options);
  },
  post(url, options) {
    return http.request('POST', url, options);
  },
});
