//! Forwards each event as a JSON `POST` to a URL the operator configures,
//! what Hasura event triggers do. Needs the `http` capability:
//!
//! ```toml
//! [plugins.webhook]
//! http = { allow = ["hooks.example.com"] }
//! config = { url = "https://hooks.example.com/rows", tables = "public.orders,public.user_accounts" }
//! ```
//!
//! A 2xx answer acknowledges the event. 408, 429, 5xx and network errors are
//! retried (after `Retry-After` seconds if the receiver sent it); any other
//! answer is permanent. Each request carries the event's id as its
//! `Idempotency-Key`, the same on every attempt, so the receiver can drop
//! the duplicate a retry after a lost answer would bring.

use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, config, export_plugin, log,
};
use serde_json::{Value, json};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

/// Events per call: each is one request, so keep a call well inside its time limit.
const BATCH_SIZE: u32 = 10;

/// Bytes per write to the request body (WASI's blocking write takes at most 4096).
const WRITE_CHUNK: usize = 4096;

struct Webhook;

impl Plugin for Webhook {
    fn manifest() -> Manifest {
        let all = [
            Operation::Insert,
            Operation::Update,
            Operation::Delete,
            Operation::Truncate,
        ];
        let mut manifest = Manifest::new("webhook", "1.0.0").batch_size(BATCH_SIZE);
        // Before the host passes config (it asks first for the name), and if
        // `tables` is unset, this subscribes to nothing and the host says so.
        for table in config::get_or("tables", "").split(',').map(str::trim) {
            if let Some((schema, table)) = table.split_once('.') {
                manifest = manifest.subscribe(Subscription::to(schema, table).on(&all));
            }
        }
        manifest
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        let Some(url) = config::get("url") else {
            return Err(Failure::permanent(
                0,
                "no `url` configured: set config = { url = \"https://...\" } in [plugins.webhook]",
            ));
        };
        let target = Target::parse(&url)
            .map_err(|e| Failure::permanent(0, format!("config url `{url}`: {e}")))?;
        for (i, event) in events.iter().enumerate() {
            match post(&target, &event.id, &payload(event)) {
                Ok(status) if (200..300).contains(&status.code) => {
                    log::debug(format!("event {} delivered ({})", event.id, status.code));
                }
                Ok(status) if status.code == 408 || status.code == 429 || status.code >= 500 => {
                    let message = format!("event {}: {url} answered {}", event.id, status.code);
                    return Err(match status.retry_after_s {
                        Some(s) => Failure::retry_after(i, s.saturating_mul(1000), message),
                        None => Failure::retry(i, message),
                    });
                }
                Ok(status) => {
                    return Err(Failure::permanent(
                        i,
                        format!(
                            "event {}: {url} answered {}; not retrying",
                            event.id, status.code
                        ),
                    ));
                }
                Err(e) => {
                    return Err(Failure::retry(
                        i,
                        format!("event {}: POST {url} failed: {e}", event.id),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The event as the receiver sees it; rows are embedded as JSON objects.
fn payload(event: &Event) -> String {
    let row = |text: &Option<String>| {
        text.as_deref()
            .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.to_owned())))
            .unwrap_or(Value::Null)
    };
    json!({
        "id": event.id,
        "operation": event.operation.as_str(),
        "schema": event.schema,
        "table": event.table,
        "key": row(&event.key),
        "new_row": row(&event.new_row),
        "old_row": row(&event.old_row),
        "captured_at": event.captured_at,
        "position": { "txid": event.position.txid, "seq": event.position.seq },
        "context": {
            "user": event.context.user,
            "application_name": event.context.application_name,
            "tag": event.context.tag,
        },
        "attempt": event.attempt,
    })
    .to_string()
}

/// Where to send: a URL taken apart.
struct Target {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err("must start with http:// or https://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err("has no host".into());
        }
        Ok(Target {
            scheme,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What the receiver answered.
struct Status {
    code: u16,
    /// `Retry-After` in seconds, if given as a number.
    retry_after_s: Option<u64>,
}

/// POST `body` and wait for the answer's status.
fn post(target: &Target, event_id: &str, body: &str) -> Result<Status, String> {
    let header = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
    let headers = Fields::from_list(&[
        header("content-type", "application/json"),
        header("content-length", &body.len().to_string()),
        header("idempotency-key", event_id),
        header("user-agent", "pgevents-webhook/1.0"),
    ])
    .map_err(|e| format!("bad header: {e:?}"))?;
    let request = OutgoingRequest::new(headers);
    let refused = |what: &str| format!("the host refused the request's {what}");
    request
        .set_method(&Method::Post)
        .map_err(|()| refused("method"))?;
    request
        .set_scheme(Some(&target.scheme))
        .map_err(|()| refused("scheme"))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| refused("authority"))?;
    request
        .set_path_with_query(Some(&target.path))
        .map_err(|()| refused("path"))?;
    let outgoing = request.body().map_err(|()| refused("body"))?;
    let response = outgoing_handler::handle(request, None).map_err(describe)?;
    let sent = (|| {
        let stream = outgoing.write().map_err(|()| refused("body stream"))?;
        for chunk in body.as_bytes().chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the body: {e:?}"))?;
        }
        drop(stream);
        OutgoingBody::finish(outgoing, None).map_err(describe)
    })();
    // If the body could not be sent, the response says why (a refused
    // request, say); otherwise, what the receiver answered.
    response.subscribe().block();
    let answer = response
        .get()
        .ok_or("no response after waiting for it")?
        .map_err(|()| "the response was already taken".to_owned())?
        .map_err(describe)?;
    sent?;
    let retry_after_s = answer
        .headers()
        .get("retry-after")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
    Ok(Status {
        code: answer.status(),
        retry_after_s,
    })
}

fn describe(e: ErrorCode) -> String {
    match e {
        ErrorCode::HttpRequestDenied => {
            "the host denied the request (is this host in the plugin's http allow-list?)".into()
        }
        ErrorCode::ConnectionRefused => "connection refused".into(),
        ErrorCode::ConnectionTimeout => "connection timed out".into(),
        other => format!("{other:?}"),
    }
}

export_plugin!(Webhook);
