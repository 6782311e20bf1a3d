//! Outbound HTTP (`wasi:http/outgoing-handler`) for plugins the operator
//! granted it ([`HttpGrant`], from the config file): each request's host is
//! checked against the grant's allow-list when it is sent, and time spent on
//! it is bounded by the call's limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
};

/// Outbound HTTP: requests to hosts on the allow-list, refused otherwise.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `"host"` (any port) or `"host:port"`; names are compared without case.
    pub allow: Vec<String>,
}

impl HttpGrant {
    /// Whether a request to `host` (as in the URL, `[..]` around IPv6) on
    /// `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allow.iter().any(|entry| {
            let (h, p) = split_host_port(entry);
            h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == Some(port))
        })
    }

    /// Whether every entry is a host or `host:port` (when the config file is read).
    pub(crate) fn check(&self) -> Result<(), String> {
        for entry in &self.allow {
            let (host, port) = split_host_port(entry);
            if host.is_empty()
                || host.contains(['/', '@', '?', '#', ' ', '*', ':']) && !host.starts_with('[')
                || port == Some(None)
            {
                return Err(format!(
                    "`{entry}` is not a host name or host:port (write e.g. \"hooks.example.com\" \
                     or \"127.0.0.1:8080\", without a scheme or path)"
                ));
            }
        }
        Ok(())
    }
}

/// `"host:port"` → (`host`, Some(Some(port))); `"host"` → (`host`, None); a
/// port that is not a number → Some(None). IPv6 literals keep their brackets.
fn split_host_port(entry: &str) -> (&str, Option<Option<u16>>) {
    let split = match entry.strip_prefix('[') {
        Some(rest) => rest.find(']').map(|i| i + 2),
        None => entry.find(':'),
    };
    match split {
        Some(i) if entry[i..].starts_with(':') => (&entry[..i], Some(entry[i + 1..].parse().ok())),
        Some(i) if i == entry.len() => (entry, None),
        Some(_) if entry.starts_with('[') => (entry, Some(None)),
        _ => (entry, None),
    }
}

/// A request a plugin sent, as a [`HttpResponder`] sees it.
#[derive(Debug, Clone)]
pub struct HttpRequestSeen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The response a [`HttpResponder`] gives.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Answers a call's HTTP requests instead of the network (`pgevents-host
/// test`): sees each request the grant allows, and each it refuses.
pub trait HttpResponder: Send + Sync {
    /// The answer to an allowed request; `None` refuses it.
    fn answer(&self, request: HttpRequestSeen) -> Option<HttpAnswer>;
    /// A request the grant refused, and why.
    fn refused(&self, method: &str, uri: &str, reason: &str);
}

/// A call's HTTP state: the context and the hooks that enforce the grant.
pub(in crate::runtime) struct Outgoing {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

struct Hooks {
    plugin: String,
    grant: Option<HttpGrant>,
    abandoned: Arc<AtomicBool>,
    /// No connect or response wait may outlast the call's own limit.
    timeout: Duration,
    /// Where requests go instead of the network, if anywhere.
    responder: Option<Arc<dyn HttpResponder>>,
}

impl Outgoing {
    pub(in crate::runtime) fn new(
        plugin: &str,
        grant: Option<HttpGrant>,
        abandoned: Arc<AtomicBool>,
        timeout: Duration,
        responder: Option<Arc<dyn HttpResponder>>,
    ) -> Outgoing {
        Outgoing {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                plugin: plugin.to_owned(),
                grant,
                abandoned,
                timeout,
                responder,
            },
        }
    }

    pub(in crate::runtime) fn view<'a>(
        &'a mut self,
        table: &'a mut wasmtime::component::ResourceTable,
    ) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            table,
            hooks: &mut self.hooks,
        }
    }
}

impl Hooks {
    /// Why a request to `uri` may not be sent, if it may not.
    fn refusal(&self, uri: &http::Uri) -> Option<String> {
        if self.abandoned.load(Ordering::SeqCst) {
            return Some("the host abandoned this call (it outlasted its time limit)".into());
        }
        let Some(grant) = &self.grant else {
            return Some(format!(
                "plugin `{}` has no http capability; the operator grants it in the host's config file: \
                 [plugins.{}] http = {{ allow = [\"host:port\"] }}",
                self.plugin, self.plugin
            ));
        };
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        if grant.allows(host, port) {
            return None;
        }
        Some(format!(
            "plugin `{}` may not call {host}:{port}; its http grant allows {:?} \
             (add the host to `allow` in [plugins.{}] http of the host's config file)",
            self.plugin, grant.allow, self.plugin
        ))
    }
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        if let Some(reason) = self.refusal(request.uri()) {
            tracing::warn!(plugin = self.plugin, "refused an HTTP request: {reason}");
            if let Some(responder) = &self.responder {
                responder.refused(
                    request.method().as_str(),
                    &request.uri().to_string(),
                    &reason,
                );
            }
            let limit = self.timeout;
            return Box::new(async move {
                let _ = tokio::time::timeout(limit, discard(request.into_body())).await;
                Err(Error::HttpRequestDenied)
            });
        }
        if let Some(responder) = self.responder.clone() {
            drop(fut);
            return Box::new(answer_with(responder, request));
        }
        let limit = self.timeout;
        let bounded = |asked: Option<Duration>| Some(asked.map_or(limit, |d| d.min(limit)));
        let options = RequestOptions {
            connect_timeout: bounded(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: bounded(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: bounded(options.and_then(|o| o.between_bytes_timeout)),
        };
        drop(fut);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

/// Read a refused request's body to its end, dropping each frame as it
/// comes (memory stays that of one frame), so that the refusal reaches a
/// guest that writes the whole body before it waits for the response
/// (JavaScript's fetch, the Python SDK) as an error of the request, not as a
/// broken body stream it cannot recover from. The caller bounds the wait.
async fn discard(mut body: WasiBody) {
    use http_body_util::BodyExt;
    while let Some(Ok(_frame)) = body.frame().await {}
}

/// Read the request's body and let `responder` answer it.
async fn answer_with(
    responder: Arc<dyn HttpResponder>,
    request: http::Request<WasiBody>,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
> {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    let seen = HttpRequestSeen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let Some(answer) = responder.answer(seen) else {
        return Err(Error::HttpRequestDenied);
    };
    let mut response = http::Response::builder().status(answer.status);
    for (k, v) in &answer.headers {
        response = response.header(k, v);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(answer.body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let response = response
        .body(body)
        .map_err(|e| Error::InternalError(Some(e.to_string())))?;
    Ok((
        response,
        Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_allow_lists_match_host_and_port() {
        let grant = HttpGrant {
            allow: vec![
                "Hooks.Example.com".into(),
                "127.0.0.1:8080".into(),
                "[::1]:9000".into(),
            ],
        };
        assert!(grant.allows("hooks.example.com", 443));
        assert!(grant.allows("hooks.example.com", 8443));
        assert!(grant.allows("127.0.0.1", 8080));
        assert!(!grant.allows("127.0.0.1", 8081));
        assert!(grant.allows("[::1]", 9000));
        assert!(!grant.allows("[::1]", 80));
        assert!(!grant.allows("evil.example.com", 443));
        assert!(!grant.allows("hooks.example.com.evil", 443));
    }
}
