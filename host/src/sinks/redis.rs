//! The redis sink (see the module doc of `sinks`): each message is
//! `XADD <subject> * id <uuid> key <key or empty> payload <bytes> headers <JSON object>`,
//! a whole burst in one pipelined round trip. Redis has no dedupe: a burst
//! sent again after a lost connection may add up to that burst twice; after
//! a "not now" reply (OOM, LOADING, ...), the entries it had already added
//! stay settled and only the rest go again.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult, Value};

use super::{BurstResult, Message, Unsent};

/// Connecting gives up after 5 s.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// A burst's replies (one round trip for all of it) must come back within
/// 5 s; the client's default, 500 ms, is too short for a large burst on a
/// busy machine.
const BURST_REPLY_TIMEOUT_MS: u64 = 5_000;
/// Error replies that mean "not now" rather than "never": the burst fails and
/// is sent again. OOM (maxmemory reached), LOADING (restarting), BUSY (a
/// script runs), MISCONF (cannot persist), READONLY, MASTERDOWN, NOREPLICAS
/// (failover), TRYAGAIN, CLUSTERDOWN, MOVED, ASK (cluster). Any other error
/// reply (WRONGTYPE: the key holds something other than a stream) refuses
/// that message for good.
const RETRY_CODES: &[&str] = &[
    "OOM",
    "LOADING",
    "BUSY",
    "MISCONF",
    "READONLY",
    "MASTERDOWN",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MOVED",
    "ASK",
];

/// A connection to a Redis server.
#[derive(Debug)]
pub struct Redis {
    connection: MultiplexedConnection,
    /// `host:port`, for messages: never the credentials a URL may hold.
    server: String,
}

impl Redis {
    /// Connect to `url` (`redis://[user:pass@]host:6379[/db]`) and check that
    /// the server answers.
    pub async fn connect(url: &str) -> Result<Redis, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("`{}` is not a Redis URL: {e}", crate::db::redact(url)))?;
        let server = client.get_connection_info().addr().to_string();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .set_response_timeout(Some(Duration::from_millis(BURST_REPLY_TIMEOUT_MS)));
        let cannot = |e: RedisError| format!("cannot connect to Redis at {server}: {e}");
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(cannot)?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map_err(cannot)?;
        Ok(Redis { connection, server })
    }

    /// `XADD` every message of `burst`, in order, in one round trip.
    pub async fn send(&mut self, burst: &[Message]) -> Result<BurstResult, Unsent> {
        if burst.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for message in burst {
            pipe.cmd("XADD")
                .arg(&message.subject)
                .arg("*")
                .arg("id")
                .arg(message.id.hyphenated().to_string())
                .arg("key")
                .arg(message.key.as_deref().unwrap_or(""))
                .arg("payload")
                .arg(message.payload.as_slice())
                .arg("headers")
                .arg(headers_json(message));
        }
        let replies: Vec<RedisResult<Value>> = pipe
            .ignore_errors()
            .query_async(&mut self.connection)
            .await
            .map_err(|e| {
                format!(
                    "sending a burst of {} messages (to `{}` first) to Redis at {} failed: {e}",
                    burst.len(),
                    burst[0].subject,
                    self.server
                )
            })?;
        if replies.len() != burst.len() {
            return Err(Unsent::all(format!(
                "Redis at {} answered {} replies to a burst of {} messages",
                self.server,
                replies.len(),
                burst.len()
            )));
        }
        let mut results = BurstResult::with_capacity(burst.len());
        for (at, (message, reply)) in burst.iter().zip(replies).enumerate() {
            match reply {
                Ok(_) => results.push(None),
                // "Not now": this one and the rest go again later (the
                // entries after it that Redis added may then be added twice).
                Err(e) if e.code().is_some_and(|code| RETRY_CODES.contains(&code)) => {
                    let error = format!(
                        "Redis at {} cannot take the message to `{}` now: {e}",
                        self.server, message.subject
                    );
                    return Err(Unsent::from(results, at, error));
                }
                Err(e) => results.push(Some(format!(
                    "Redis refused XADD to `{}`: {e}",
                    message.subject
                ))),
            }
        }
        Ok(results)
    }
}

/// The headers as one JSON object; a repeated name keeps its last value.
fn headers_json(message: &Message) -> String {
    let object: serde_json::Map<String, serde_json::Value> = message
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
        .collect();
    serde_json::Value::Object(object).to_string()
}
