//! Outbound HTTP, for plugins the operator grants it to.
//!
//! ```
//! use pgevents_plugin_sdk::{http, Event, EventError};
//!
//! /// Tells a search index that a product changed.
//! fn reindex(event: &Event) -> Result<(), EventError> {
//!     http::post("https://search.example.com/reindex")
//!         .header("idempotency-key", &event.id)
//!         .json(&serde_json::json!({ "table": event.table, "key": event.key }))?
//!         .send()?
//!         .check()?;
//!     Ok(())
//! }
//!
//! // Natively there is no host: a test answers requests itself.
//! http::respond_with(|request| {
//!     assert_eq!(request.header_value("idempotency-key"), Some("test-1"));
//!     Ok(http::Response::new(503).with_header("retry-after", "30"))
//! });
//! let err = reindex(&Event::insert("public.products", serde_json::json!({"id": 1}))).unwrap_err();
//! assert_eq!(err.message, "POST https://search.example.com/reindex answered 503");
//! assert!(matches!(err.disposition, pgevents_plugin_sdk::Disposition::Retry(Some(30_000))));
//! ```
//!
//! - **Granted by the operator**, host by host: `http = { allow =
//!   ["search.example.com"] }` in the plugin's section of the host's config
//!   file. A request to any other host fails with
//!   [`HttpError::is_denied`]. A plugin that never sends a request does not
//!   import HTTP, so it needs no grant.
//! - **Not part of the transaction.** A request is sent when [`Request::send`]
//!   is called; a batch that fails later does not take it back, and the
//!   event is delivered again. Send an idempotency key the receiver can use
//!   to drop the duplicate ([`Event::id`](crate::Event) is the same on every
//!   attempt).
//! - **Inside the call's time limit.** The host stops a call that runs too
//!   long; keep batches small when each event makes a request.
//!
//! Compiled for any other target than WebAssembly (a plugin's native unit
//! tests) there is no host: [`Request::send`] asks the function given to
//! [`respond_with`] on this thread, and fails if there is none.

use std::cell::RefCell;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::EventError;

/// A request, built with [`get`], [`post`] or [`Request::new`] and sent
/// with [`Request::send`].
///
/// ```
/// use pgevents_plugin_sdk::http;
///
/// let request = http::post("http://127.0.0.1:8080/hook").header("x-kind", "row").body("hi");
/// assert_eq!(request.method(), "POST");
/// assert_eq!(request.body_bytes(), b"hi");
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A `GET` request to `url` (`http://` or `https://`).
pub fn get(url: impl Into<String>) -> Request {
    Request::new("GET", url)
}

/// A `POST` request to `url` (`http://` or `https://`).
pub fn post(url: impl Into<String>) -> Request {
    Request::new("POST", url)
}

impl Request {
    /// A request with any method (`"PUT"`, `"DELETE"`, ...).
    ///
    /// ```
    /// use pgevents_plugin_sdk::http::Request;
    ///
    /// assert_eq!(Request::new("PUT", "https://example.com/items/7").url(), "https://example.com/items/7");
    /// ```
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: vec![("user-agent".to_owned(), "pgevents-plugin".to_owned())],
            body: Vec::new(),
        }
    }

    /// Adds a header, replacing an earlier one of the same name (names are
    /// case-insensitive). `content-length` is set from the body.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    /// The body, as bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The body as `value` in JSON, with `content-type: application/json`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::http;
    ///
    /// let request = http::post("https://example.com/").json(&serde_json::json!({"a": 1}))?;
    /// assert_eq!(request.header_value("content-type"), Some("application/json"));
    /// assert_eq!(request.body_bytes(), br#"{"a":1}"#);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, serde_json::Error> {
        let body = serde_json::to_vec(value)?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The headers, names in lowercase.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The value of header `name` (any case), if set.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Sends the request and waits for the whole response.
    ///
    /// Any status is `Ok`; [`Response::check`] turns the status into an
    /// error. `Err` means no response: the URL does not parse, the host
    /// denied the request (not on the allow-list), or the network failed.
    pub fn send(&self) -> Result<Response, HttpError> {
        let target = Target::parse(&self.url).map_err(|why| HttpError {
            kind: Kind::InvalidRequest,
            message: format!("URL `{}` {why}", self.url),
        })?;
        let mut response = imp::send(self, &target)?;
        response.request = format!("{} {}", self.method, self.url);
        Ok(response)
    }
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What the server answered.
///
/// ```
/// use pgevents_plugin_sdk::http::Response;
///
/// let response = Response::new(200).with_body(r#"{"ok":true}"#);
/// assert!(response.is_success());
/// let body: serde_json::Value = response.json()?;
/// assert_eq!(body["ok"], true);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lowercase (values that are not UTF-8 are
    /// decoded lossily).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// `METHOD URL` of the request, for messages.
    request: String,
}

impl Response {
    /// A response with `status` and no headers or body (for tests).
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// The same response with a header added (for tests).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// The same response with `body` (for tests).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The value of header `name` (any case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// `Retry-After` in milliseconds, if the server sent it as seconds.
    ///
    /// ```
    /// use pgevents_plugin_sdk::http::Response;
    ///
    /// assert_eq!(Response::new(429).with_header("Retry-After", "2").retry_after_ms(), Some(2_000));
    /// ```
    pub fn retry_after_ms(&self) -> Option<u64> {
        let seconds: u64 = self.header("retry-after")?.trim().parse().ok()?;
        Some(seconds.saturating_mul(1000))
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The response if its status is 2xx; otherwise the [`EventError`] a
    /// handler usually wants: 408, 429 and 5xx are retried (after
    /// `Retry-After` if the server sent it), any other status is permanent.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{http::Response, Disposition};
    ///
    /// assert!(Response::new(204).check().is_ok());
    /// let err = Response::new(400).check().unwrap_err();
    /// assert!(matches!(err.disposition, Disposition::Permanent));
    /// assert!(err.message.ends_with("answered 400; not retrying"));
    /// ```
    pub fn check(self) -> Result<Response, EventError> {
        let status = self.status;
        let request = if self.request.is_empty() {
            "the request"
        } else {
            self.request.as_str()
        };
        if self.is_success() {
            Ok(self)
        } else if status == 408 || status == 429 || status >= 500 {
            let message = format!("{request} answered {status}");
            Err(match self.retry_after_ms() {
                Some(ms) => EventError::retry_after(ms, message),
                None => EventError::retry(message),
            })
        } else {
            Err(EventError::permanent(format!(
                "{request} answered {status}; not retrying"
            )))
        }
    }
}

/// Why a request got no response.
///
/// ```
/// use pgevents_plugin_sdk::http;
///
/// let err = http::get("ftp://example.com/").send().unwrap_err();
/// assert!(err.is_invalid_request());
/// assert_eq!(err.to_string(), "URL `ftp://example.com/` must start with http:// or https://");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InvalidRequest,
    Denied,
    Failed,
}

impl HttpError {
    /// An error for a test's responder to return: the network failed.
    pub fn network(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Failed,
            message: message.into(),
        }
    }

    /// An error for a test's responder to return: the host denied the request.
    pub fn denied() -> Self {
        Self {
            kind: Kind::Denied,
            message: DENIED.to_owned(),
        }
    }

    /// Whether the host refused the request: its host is not on the
    /// plugin's allow-list (or the plugin has no `http` grant).
    pub fn is_denied(&self) -> bool {
        self.kind == Kind::Denied
    }

    /// Whether the request itself is wrong (a URL that does not parse, a
    /// header or method the host refuses), so sending it again cannot help.
    pub fn is_invalid_request(&self) -> bool {
        self.kind == Kind::InvalidRequest
    }
}

const DENIED: &str = "the host denied the request (is this host in the plugin's http allow-list?)";

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

/// Where to send: a URL taken apart.
#[derive(Debug)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    allow(dead_code, reason = "natively the responder reads the URL itself")
)]
struct Target {
    https: bool,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, &'static str> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("must start with http:// or https://");
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err("has no host (or has user info, which is not supported)");
        }
        let path = path.split('#').next().unwrap_or_default();
        let path = match path.strip_prefix('?') {
            Some(query) => format!("/?{query}"),
            None if path.is_empty() => "/".to_owned(),
            None => path.to_owned(),
        };
        Ok(Target {
            https,
            authority: authority.to_owned(),
            path,
        })
    }
}

type Responder = Box<dyn Fn(&Request) -> Result<Response, HttpError>>;

thread_local! {
    static RESPONDER: RefCell<Option<Responder>> = const { RefCell::new(None) };
}

/// In a native build (a plugin's unit tests), answers this thread's
/// requests with `responder` instead of the network. Inside the host it is
/// never asked.
///
/// ```
/// use pgevents_plugin_sdk::http;
///
/// http::respond_with(|request| Ok(http::Response::new(200).with_body(request.url().to_owned())));
/// let response = http::get("http://example.com/ping").send()?;
/// assert_eq!(response.text().unwrap(), "http://example.com/ping");
/// # Ok::<(), http::HttpError>(())
/// ```
pub fn respond_with(responder: impl Fn(&Request) -> Result<Response, HttpError> + 'static) {
    RESPONDER.set(Some(Box::new(responder)));
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{HttpError, RESPONDER, Request, Response, Target};

    pub(super) fn send(request: &Request, _target: &Target) -> Result<Response, HttpError> {
        RESPONDER.with_borrow(|responder| match responder {
            Some(respond) => respond(request),
            None => Err(HttpError::network(
                "http works only inside pgevents-host (this build is not WebAssembly); \
                 a test answers requests with http::respond_with",
            )),
        })
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
    };
    use wasip2::io::streams::StreamError;

    use super::{HttpError, Kind, Request, Response, Target};

    /// Bytes per write to the request body (WASI's blocking write takes at most 4096).
    const WRITE_CHUNK: usize = 4096;

    fn invalid(what: &str) -> HttpError {
        HttpError {
            kind: Kind::InvalidRequest,
            message: format!("the host refused the request's {what}"),
        }
    }

    fn failed(e: ErrorCode) -> HttpError {
        match e {
            ErrorCode::HttpRequestDenied => HttpError::denied(),
            ErrorCode::ConnectionRefused => HttpError::network("connection refused"),
            ErrorCode::ConnectionTimeout => HttpError::network("connection timed out"),
            ErrorCode::HttpRequestUriInvalid => HttpError {
                kind: Kind::InvalidRequest,
                message: "the host found the URL invalid".into(),
            },
            other => HttpError::network(format!("{other:?}")),
        }
    }

    fn method(name: &str) -> Method {
        match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            _ => Method::Other(name.to_owned()),
        }
    }

    pub(super) fn send(request: &Request, target: &Target) -> Result<Response, HttpError> {
        let mut headers: Vec<(String, Vec<u8>)> = request
            .headers
            .iter()
            .filter(|(name, _)| name != "content-length")
            .map(|(name, value)| (name.clone(), value.as_bytes().to_vec()))
            .collect();
        if !request.body.is_empty()
            || !matches!(method(&request.method), Method::Get | Method::Head)
        {
            headers.push((
                "content-length".into(),
                request.body.len().to_string().into_bytes(),
            ));
        }
        let fields = Fields::from_list(&headers).map_err(|e| HttpError {
            kind: Kind::InvalidRequest,
            message: format!("a header the host refuses: {e:?}"),
        })?;
        let outgoing = OutgoingRequest::new(fields);
        outgoing
            .set_method(&method(&request.method))
            .map_err(|()| invalid("method"))?;
        let scheme = if target.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        outgoing
            .set_authority(Some(&target.authority))
            .map_err(|()| invalid("authority"))?;
        outgoing
            .set_path_with_query(Some(&target.path))
            .map_err(|()| invalid("path"))?;
        let body = outgoing.body().map_err(|()| invalid("body"))?;
        let pending = outgoing_handler::handle(outgoing, None).map_err(failed)?;
        let sent = (|| {
            let stream = body.write().map_err(|()| invalid("body stream"))?;
            for chunk in request.body.chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::network(format!("writing the body: {e:?}")))?;
            }
            drop(stream);
            OutgoingBody::finish(body, None).map_err(failed)
        })();
        // If the body could not be sent, the response says why (a denied
        // request, say); otherwise, what the server answered.
        pending.subscribe().block();
        let answer = pending
            .get()
            .ok_or_else(|| HttpError::network("no response after waiting for it"))?
            .map_err(|()| HttpError::network("the response was already taken"))?
            .map_err(failed)?;
        sent?;
        let headers = answer
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_ascii_lowercase(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect();
        let status = answer.status();
        let incoming = answer
            .consume()
            .map_err(|()| HttpError::network("the response body was already taken"))?;
        let body = read_all(&incoming)?;
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body,
            request: String::new(),
        })
    }

    fn read_all(incoming: &IncomingBody) -> Result<Vec<u8>, HttpError> {
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::network("the response body stream was already taken"))?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return Ok(body),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(HttpError::network(format!(
                        "reading the response body: {}",
                        e.to_debug_string()
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (bool, String, String) {
        let t = Target::parse(url).unwrap();
        (t.https, t.authority, t.path)
    }

    #[test]
    fn urls_are_taken_apart_into_scheme_authority_and_path_with_query() {
        assert_eq!(
            parts("https://a.example"),
            (true, "a.example".into(), "/".into())
        );
        assert_eq!(
            parts("http://127.0.0.1:8080/hook?x=1#frag"),
            (false, "127.0.0.1:8080".into(), "/hook?x=1".into())
        );
        assert_eq!(parts("http://h?q=1"), (false, "h".into(), "/?q=1".into()));
        for bad in [
            "",
            "ftp://h/",
            "http://",
            "http:///path",
            "https://user:pw@h/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_a_responder_a_native_request_fails_and_says_how_to_answer_it() {
        let err = get("http://h/").send().unwrap_err();
        assert!(!err.is_denied() && !err.is_invalid_request());
        assert!(err.to_string().contains("http::respond_with"), "{err}");
    }

    #[test]
    fn check_retries_408_429_and_5xx_with_retry_after_and_names_the_request() {
        respond_with(|r| {
            let status = r.url().rsplit('/').next().unwrap().parse().unwrap();
            Ok(Response::new(status).with_header("Retry-After", "3"))
        });
        for (status, retried) in [
            (408, true),
            (429, true),
            (500, true),
            (503, true),
            (404, false),
            (301, false),
        ] {
            let err = post(format!("http://h/{status}"))
                .send()
                .unwrap()
                .check()
                .unwrap_err();
            match err.disposition {
                crate::Disposition::Retry(delay) => {
                    assert!(retried, "{status}");
                    assert_eq!(delay, Some(3000));
                }
                crate::Disposition::Permanent => assert!(!retried, "{status}"),
            }
            assert!(
                err.message
                    .starts_with(&format!("POST http://h/{status} answered {status}")),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn headers_replace_earlier_ones_of_any_case() {
        let r = get("http://h/")
            .header("X-A", "1")
            .header("x-a", "2")
            .header("User-Agent", "me");
        assert_eq!(r.header_value("x-a"), Some("2"));
        assert_eq!(
            r.headers()
                .iter()
                .filter(|(n, _)| n == "user-agent")
                .count(),
            1
        );
    }
}
