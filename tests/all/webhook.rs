//! The webhook example plugin and the `http` capability, against an HTTP
//! receiver each test starts on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents_host::observer::HostEvent;
use serde_json::Value;

use crate::support::{Host, PATIENCE, TestDb, plugins_dir, settings_with};

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// An HTTP/1.1 server on a thread of its own: it records each request and
/// answers with what `answer` says for the n-th request (status, headers).
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

type Answer = Box<dyn Fn(usize, &Received) -> (u16, Vec<(&'static str, String)>) + Send>;

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port for the receiver");
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else {
                    continue;
                };
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(request.clone());
                    log.len() - 1
                };
                let (status, headers) = answer(n, &request);
                let mut reply =
                    format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n");
                for (name, value) in headers {
                    reply.push_str(&format!("{name}: {value}\r\n"));
                }
                reply.push_str("\r\n");
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Receiver { port, received }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} of {n} requests: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One request off the wire (with a `content-length` or a chunked body).
fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let mut body = Vec::new();
    if let Some(length) = headers.get("content-length") {
        body.resize(length.parse().ok()?, 0);
        reader.read_exact(&mut body).ok()?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(Received {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn webhook_config(receiver: &Receiver, allow: &str, extra: &str) -> String {
    format!(
        "[plugins.webhook]\n\
         http = {{ allow = [\"{allow}\"] }}\n\
         config = {{ url = \"{}\", tables = \"public.items\" }}\n{extra}",
        receiver.url()
    )
}

#[tokio::test]
async fn webhook_posts_each_event_as_json_with_an_idempotency_key() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Box::new(|_, _| (200, vec![])));
    let settings = settings_with(&webhook_config(
        &receiver,
        &format!("127.0.0.1:{}", receiver.port),
        "",
    ));
    let host = Host::start_with(&db, plugins_dir(&["webhook"]), settings).await;
    assert!(host.rejections().is_empty(), "{:?}", host.rejections());
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO items (name, qty) VALUES ('anvil', 1), ('rope', 2);
         UPDATE items SET qty = 3 WHERE name = 'rope';
         DELETE FROM items WHERE name = 'anvil';",
    )
    .await
    .unwrap();
    let got = receiver.wait_for(4).await;
    let ops: Vec<_> = got.iter().map(|r| r.body["operation"].clone()).collect();
    assert_eq!(ops, ["insert", "insert", "update", "delete"], "{got:#?}");
    for r in &got {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["idempotency-key"], r.body["id"].as_str().unwrap());
        assert_eq!(
            (&r.body["schema"], &r.body["table"]),
            (&Value::from("public"), &Value::from("items"))
        );
        assert_eq!(r.body["attempt"], 1);
    }
    assert_eq!(got[0].body["new_row"]["name"], "anvil");
    assert_eq!(got[2].body["old_row"]["qty"], 2);
    assert_eq!(got[2].body["new_row"]["qty"], 3);
    assert_eq!(got[3].body["key"]["id"], got[0].body["new_row"]["id"]);
    assert!(got[3].body["new_row"].is_null());
    host.stop().await;
    assert_eq!(receiver.received().len(), 4, "each event once");
}

#[tokio::test]
async fn webhook_retries_5xx_and_429_and_gives_up_on_other_4xx() {
    let db = TestDb::new().await;
    // The first event: 503, then 429 (retry after 1 s), then 200. The second: 400.
    let receiver = Receiver::start(Box::new(|n, r| {
        match (n, r.body["new_row"]["name"].as_str()) {
            (_, Some("bad")) => (400, vec![]),
            (0, _) => (503, vec![]),
            (1, _) => (429, vec![("retry-after", "1".into())]),
            _ => (200, vec![]),
        }
    }));
    // Delays the plugin asks for are capped at `retry_max`.
    let settings = settings_with(&webhook_config(
        &receiver,
        &format!("127.0.0.1:{}", receiver.port),
        "retry_max = \"5s\"\n",
    ));
    let mut host = Host::start_with(&db, plugins_dir(&["webhook"]), settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('good')")
        .await
        .unwrap();
    let got = receiver.wait_for(3).await;
    host.wait_until(
        "the event is acknowledged",
        |e| matches!(e, HostEvent::BatchHandled { plugin, .. } if plugin == "webhook"),
    )
    .await;
    let first = &got[0].body["id"];
    assert!(got[..3].iter().all(|r| &r.body["id"] == first), "{got:#?}");
    let attempts: Vec<_> = got[..3].iter().map(|r| r.body["attempt"].clone()).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let failures = host.failures("webhook");
    assert!(failures[0].contains("answered 503"), "{failures:?}");
    assert!(failures[1].contains("answered 429"), "{failures:?}");
    // Retry-After: 1 was honoured.
    let retry_in: Vec<_> = host
        .history
        .iter()
        .filter_map(|e| match e {
            HostEvent::BatchFailed { retry_in, .. } => *retry_in,
            _ => None,
        })
        .collect();
    assert_eq!(
        retry_in.get(1),
        Some(&Duration::from_secs(1)),
        "{retry_in:?}"
    );

    c.batch_execute("INSERT INTO items (name) VALUES ('bad')")
        .await
        .unwrap();
    host.wait_until("the 400 dead-letters the event", |e| {
        matches!(e, HostEvent::DeadLettered { plugin, message, .. }
            if plugin == "webhook" && message.contains("answered 400; not retrying"))
    })
    .await;
    assert_eq!(receiver.received().len(), 4, "a 400 is not retried");
    host.stop().await;
}

#[tokio::test]
async fn http_to_a_host_not_allowed_is_denied_and_the_host_keeps_serving() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Box::new(|_, _| (200, vec![])));
    // Allowed: another port on the same address.
    let other = receiver.port.wrapping_add(1).max(1);
    let settings = settings_with(&webhook_config(
        &receiver,
        &format!("127.0.0.1:{other}"),
        "",
    ));
    let mut host = Host::start_with(&db, plugins_dir(&["webhook", "recorder"]), settings).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO items (name) VALUES ('denied')")
        .await
        .unwrap();
    host.wait_until(
        "the webhook's batch fails",
        |e| matches!(e, HostEvent::BatchFailed { plugin, .. } if plugin == "webhook"),
    )
    .await;
    let failures = host.failures("webhook");
    assert!(
        failures[0].contains("the host denied the request"),
        "{failures:?}"
    );
    // The recorder, in the same host, handles the same event.
    host.wait_seen("recorder", 1).await;
    host.settle(Duration::from_millis(300)).await;
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    host.stop().await;
}

#[tokio::test]
async fn a_plugin_importing_http_without_a_grant_is_refused_at_load() {
    let db = TestDb::new().await;
    let settings = settings_with(
        "[plugins.webhook]\nconfig = { url = \"http://127.0.0.1:9/\", tables = \"public.items\" }\n",
    );
    let host = Host::start_with(&db, plugins_dir(&["webhook"]), settings).await;
    let rejections = host.rejections();
    assert!(
        rejections.iter().any(|r| r.contains(
            "plugin `webhook` imports the `http` capability, which the operator has not granted it"
        ) && r
            .contains("[plugins.webhook]\n    http = { allow = [\"host:port\"] }")
            && r.contains("-d http fetch-event")),
        "{rejections:?}"
    );
    host.stop().await;
}
