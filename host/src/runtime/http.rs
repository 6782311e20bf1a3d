//! Outbound HTTP (`wasi:http/outgoing-handler`) for plugins the operator
//! granted it: each request's host is checked against the grant's allow-list
//! when it is sent, and time spent on it is bounded by the call's limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
};

use crate::config::HttpGrant;

/// A call's HTTP state: the context and the hooks that enforce the grant.
pub(super) struct Outgoing {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

struct Hooks {
    plugin: String,
    grant: Option<HttpGrant>,
    abandoned: Arc<AtomicBool>,
    /// No connect or response wait may outlast the call's own limit.
    timeout: Duration,
}

impl Outgoing {
    pub(super) fn new(
        plugin: &str,
        grant: Option<HttpGrant>,
        abandoned: Arc<AtomicBool>,
        timeout: Duration,
    ) -> Outgoing {
        Outgoing {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                plugin: plugin.to_owned(),
                grant,
                abandoned,
                timeout,
            },
        }
    }

    pub(super) fn view<'a>(
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
            return Box::new(async { Err(Error::HttpRequestDenied) });
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
