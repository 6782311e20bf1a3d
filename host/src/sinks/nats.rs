//! The nats sink (see the module doc of `sinks`): each message is a JetStream
//! publish carrying `Nats-Msg-Id` = its id, so a resend inside the stream's
//! dedupe window (`duplicate_window`, 2 min unless the stream says otherwise)
//! is acknowledged without being stored twice.

use std::error::Error as _;
use std::str::FromStr;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ContextBuilder};
use async_nats::{ClientError, Event, ServerAddr};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use super::{BurstResult, Message};

/// A burst gets 5 s for all of its publishes to be queued and all of its
/// PubAcks to come back (together, not each). A connection that dies without
/// a FIN or RST fails the burst after this long; one that closes fails it at
/// once.
const BURST_ACK_TIMEOUT_MS: u64 = 5_000;
/// Connecting (TCP, INFO, CONNECT, PONG) gives up after 5 s.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// A lost connection is retried in the background at once, then every 1 s,
/// 30 times (about 30 s), then given up: publishes still queued in a dead
/// client are sent no later than that, well inside the default 2 min dedupe
/// window, and no client keeps dialing after the flusher has moved on to a
/// new connection.
const RECONNECT_DELAY_MS: u64 = 1_000;
const RECONNECT_ATTEMPTS: usize = 30;
/// The header that carries the message's key.
const KEY_HEADER: &str = "Pgevents-Key";

/// A connection to a NATS server with JetStream.
#[derive(Debug)]
pub struct Nats {
    jetstream: jetstream::Context,
    /// `host:port`, for messages: never the credentials a URL may hold.
    server: String,
    /// Counts lost connections, so that a burst notices a loss while it waits.
    losses: watch::Receiver<u64>,
}

impl Nats {
    /// Connect to `url` (`nats://[user:pass@]host:4222`) and check that the
    /// server answers JetStream requests.
    pub async fn connect(url: &str) -> Result<Nats, String> {
        let server = ServerAddr::from_str(url)
            .map(|addr| format!("{}:{}", addr.host(), addr.port()))
            .map_err(|e| format!("`{}` is not a NATS URL: {e}", crate::db::redact(url)))?;
        let (lost, losses) = watch::channel(0u64);
        let named = server.clone();
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .request_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .reconnect_delay_callback(|attempt| match attempt {
                0 | 1 => Duration::ZERO,
                _ => Duration::from_millis(RECONNECT_DELAY_MS),
            })
            .max_reconnects(RECONNECT_ATTEMPTS)
            .event_callback(move |event| {
                match event {
                    Event::Disconnected => {
                        lost.send_modify(|n| *n += 1);
                        tracing::warn!(
                            "lost the connection to NATS at {named}; reconnecting in the background"
                        );
                    }
                    Event::Connected if *lost.borrow() > 0 => {
                        tracing::info!("connected to NATS at {named} again");
                    }
                    Event::ClientError(ClientError::MaxReconnects) => tracing::warn!(
                        "gave up reconnecting to NATS at {named} after {RECONNECT_ATTEMPTS} attempts"
                    ),
                    _ => {}
                }
                std::future::ready(())
            });
        let client = options
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to NATS at {server}: {e}"))?;
        let jetstream = ContextBuilder::new()
            .timeout(Duration::from_millis(BURST_ACK_TIMEOUT_MS))
            .ack_timeout(Duration::from_millis(BURST_ACK_TIMEOUT_MS))
            .build(client);
        check_jetstream(&jetstream.client()).await.map_err(|e| {
            format!("NATS at {server} does not answer JetStream requests ({e}): is JetStream enabled (`nats-server -js`)?")
        })?;
        Ok(Nats {
            jetstream,
            server,
            losses,
        })
    }

    /// Publish `burst` in order (pipelined), then wait for every PubAck.
    pub async fn send(&mut self, burst: &[Message]) -> Result<BurstResult, String> {
        // Only a loss from here on concerns this burst; a connection still
        // down is caught by the state just below.
        self.losses.mark_unchanged();
        if self.jetstream.client().connection_state() != State::Connected {
            return Err(format!(
                "not connected to NATS at {} (the connection was lost; the client is reconnecting in the background)",
                self.server
            ));
        }
        let publishing = publish(&self.jetstream, &self.server, burst);
        tokio::select! {
            result = publishing => result,
            _ = self.losses.changed() => Err(format!(
                "lost the connection to NATS at {} while sending a burst of {} messages (to `{}` first)",
                self.server,
                burst.len(),
                burst.first().map_or("", |m| m.subject.as_str()),
            )),
        }
    }
}

/// Ask `$JS.API.INFO` by hand: `Context::query_account` cannot read the
/// answer of a nats-server before 2.10 (it requires `reserved_memory`).
async fn check_jetstream(client: &async_nats::Client) -> Result<(), String> {
    let reply = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("the answer is not JSON: {e}"))?;
    match info.get("error") {
        Some(error) => Err(error.to_string()),
        None => Ok(()),
    }
}

/// Queue every publish of `burst`, then collect the PubAcks in order.
async fn publish(
    jetstream: &jetstream::Context,
    server: &str,
    burst: &[Message],
) -> Result<BurstResult, String> {
    let deadline = Instant::now() + Duration::from_millis(BURST_ACK_TIMEOUT_MS);
    let mut result: BurstResult = vec![None; burst.len()];
    let mut acks: Vec<(usize, PublishAckFuture)> = Vec::with_capacity(burst.len());
    for (i, message) in burst.iter().enumerate() {
        let headers = match headers(message) {
            Ok(headers) => headers,
            Err(reason) => {
                result[i] = Some(reason);
                continue;
            }
        };
        let queued = jetstream.publish_with_headers(
            message.subject.clone(),
            headers,
            message.payload.clone().into(),
        );
        match timeout_at(deadline, queued).await {
            Ok(Ok(ack)) => acks.push((i, ack)),
            Ok(Err(e)) => result[i] = Some(refusal(message, server, e)?),
            Err(_) => {
                return Err(format!(
                    "could not queue the message to `{}` for NATS at {server} within {BURST_ACK_TIMEOUT_MS} ms (the connection is stalled)",
                    message.subject
                ));
            }
        }
    }
    let mut duplicates = 0;
    for (i, ack) in acks {
        match timeout_at(deadline, ack).await {
            Ok(Ok(ack)) => duplicates += usize::from(ack.duplicate),
            Ok(Err(e)) => result[i] = Some(refusal(&burst[i], server, e)?),
            Err(_) => {
                return Err(format!(
                    "NATS at {server} did not acknowledge the message to `{}` within {BURST_ACK_TIMEOUT_MS} ms",
                    burst[i].subject
                ));
            }
        }
    }
    if duplicates > 0 {
        tracing::debug!(
            "NATS at {server} already had {duplicates} of {} messages (a resend)",
            burst.len()
        );
    }
    Ok(result)
}

/// The message's headers, then ours: a plugin's header of the same name must
/// not change the id that NATS dedupes by.
fn headers(message: &Message) -> Result<HeaderMap, String> {
    let subject = &message.subject;
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        let Some(parsed) = HeaderName::from_str(name).ok().filter(|_| !name.is_empty()) else {
            return Err(format!(
                "the message to `{subject}` has a header name NATS cannot carry (`{name}`: printable ASCII without `:` only)"
            ));
        };
        let value = HeaderValue::from_str(value).map_err(|_| {
            format!("the message to `{subject}` has a line break in header `{name}`, which NATS cannot carry")
        })?;
        headers.append(parsed, value);
    }
    headers.insert(NATS_MESSAGE_ID, message.id.hyphenated().to_string());
    if let Some(key) = &message.key {
        let value = HeaderValue::from_str(key).map_err(|_| {
            format!("the message to `{subject}` has a line break in its key, which a NATS header cannot carry")
        })?;
        headers.insert(HeaderName::from_static(KEY_HEADER), value);
    }
    Ok(headers)
}

/// `Ok(reason)`: NATS refused this message for good (no stream takes the
/// subject, too large, a 4xx JetStream error). `Err`: the connection failed or
/// the server cannot store it now (a 5xx JetStream error), so the whole burst
/// is sent again.
fn refusal(message: &Message, server: &str, error: PublishError) -> Result<String, String> {
    let subject = &message.subject;
    let api_error = error
        .source()
        .and_then(|source| source.downcast_ref::<jetstream::Error>());
    let bad_subject = error
        .source()
        .is_some_and(|source| source.is::<async_nats::SubjectError>());
    // The kind's own text ("publish failed: ") says nothing the reason does not.
    let cause = error
        .source()
        .map_or_else(|| error.to_string(), ToString::to_string);
    match error.kind() {
        PublishErrorKind::StreamNotFound => Ok(format!(
            "no JetStream stream takes subject `{subject}` (NATS at {server} has no responder for it)"
        )),
        PublishErrorKind::MaxPayloadExceeded => Ok(format!(
            "the message to `{subject}` is too large for NATS at {server}: {cause} (headers included)"
        )),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => Ok(format!(
            "JetStream refused the message to `{subject}`: {error}"
        )),
        // 5xx: the server cannot now (no leader, out of storage, a full
        // stream that discards new messages); 4xx: it never will.
        PublishErrorKind::Other if api_error.is_some_and(|e| e.code() >= 500) => Err(format!(
            "JetStream at {server} cannot store the message to `{subject}` now: {cause}"
        )),
        PublishErrorKind::Other if api_error.is_some() => Ok(format!(
            "JetStream refused the message to `{subject}`: {cause}"
        )),
        PublishErrorKind::Other if bad_subject => Ok(format!(
            "`{subject}` is not a subject NATS accepts (no spaces, no empty tokens)"
        )),
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::Other => Err(format!(
            "sending the message to `{subject}` to NATS at {server} failed: {error}"
        )),
    }
}
