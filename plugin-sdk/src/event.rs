//! Decoding and describing [`Event`]s.

use std::cell::Cell;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Event, Operation, Position};

impl Operation {
    /// All four operations, in WIT order.
    ///
    /// ```
    /// use pgevents_plugin_sdk::Operation;
    ///
    /// assert_eq!(Operation::ALL.len(), 4);
    /// ```
    pub const ALL: [Operation; 4] = [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ];

    /// The lowercase WIT name: `"insert"`, `"update"`, `"delete"` or `"truncate"`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::Operation;
    ///
    /// assert_eq!(Operation::Truncate.as_str(), "truncate");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Truncate => "truncate",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Ok(None)` when the JSON is absent, so "no row" and "bad row" stay distinct.
fn decode<T: DeserializeOwned>(json: Option<&str>) -> Result<Option<T>, serde_json::Error> {
    json.map(serde_json::from_str).transpose()
}

impl Event {
    /// The row after the change (inserts and updates), decoded from JSON.
    ///
    /// `Ok(None)` for deletes and truncates; `Err` if the row does not fit `T`.
    ///
    /// ```
    /// # use pgevents_plugin_sdk::{Context, Event, Operation, Position};
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Item {
    ///     id: i64,
    ///     note: Option<String>,
    /// }
    ///
    /// # let event = Event {
    /// #     id: "1".into(), position: Position { txid: 1, seq: 1 }, operation: Operation::Insert,
    /// #     schema: "public".into(), table: "items".into(), key: Some(r#"{"id":7}"#.into()),
    /// #     new_row: Some(r#"{"id":7,"note":"hi"}"#.into()), old_row: None,
    /// #     captured_at: "2025-01-01T00:00:00.000000Z".into(),
    /// #     context: Context { user: "app".into(), application_name: String::new(), tag: None },
    /// #     attempt: 1,
    /// # };
    /// let item: Item = event.new_row()?.expect("inserts carry a new row");
    /// assert_eq!(item.id, 7);
    /// assert_eq!(item.note.as_deref(), Some("hi"));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn new_row<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        decode(self.new_row.as_deref())
    }

    /// The row before the change (updates and deletes), decoded from JSON.
    ///
    /// `Ok(None)` for inserts and truncates; `Err` if the row does not fit `T`.
    ///
    /// ```
    /// # use pgevents_plugin_sdk::{Context, Event, Operation, Position};
    /// use serde_json::Value;
    ///
    /// # let event = Event {
    /// #     id: "1".into(), position: Position { txid: 1, seq: 1 }, operation: Operation::Delete,
    /// #     schema: "public".into(), table: "items".into(), key: Some(r#"{"id":7}"#.into()),
    /// #     new_row: None, old_row: Some(r#"{"id":7}"#.into()),
    /// #     captured_at: "2025-01-01T00:00:00.000000Z".into(),
    /// #     context: Context { user: "app".into(), application_name: String::new(), tag: None },
    /// #     attempt: 1,
    /// # };
    /// let old: Option<Value> = event.old_row()?;
    /// assert_eq!(old.unwrap()["id"], 7);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn old_row<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        decode(self.old_row.as_deref())
    }

    /// The primary-key values, decoded from JSON.
    ///
    /// `Ok(None)` for tables without a primary key and for truncates.
    ///
    /// ```
    /// # use pgevents_plugin_sdk::{Context, Event, Operation, Position};
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct ItemKey {
    ///     id: i64,
    /// }
    ///
    /// # let event = Event {
    /// #     id: "1".into(), position: Position { txid: 1, seq: 1 }, operation: Operation::Delete,
    /// #     schema: "public".into(), table: "items".into(), key: Some(r#"{"id":7}"#.into()),
    /// #     new_row: None, old_row: Some(r#"{"id":7}"#.into()),
    /// #     captured_at: "2025-01-01T00:00:00.000000Z".into(),
    /// #     context: Context { user: "app".into(), application_name: String::new(), tag: None },
    /// #     attempt: 1,
    /// # };
    /// let key: ItemKey = event.key()?.expect("items has a primary key");
    /// assert_eq!(key.id, 7);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn key<T: DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        decode(self.key.as_deref())
    }

    /// Every field of the event as `(name, value)` text pairs, for logging.
    ///
    /// Always these fourteen names in this order: `id`, `txid`, `seq`, `op`,
    /// `schema`, `table`, `key`, `new`, `old`, `attempt`, `user`,
    /// `application_name`, `tag`, `captured_at`. Numbers are decimal, rows and
    /// keys are their JSON text, and an absent key, row or tag is `""`.
    ///
    /// ```
    /// # use pgevents_plugin_sdk::{Context, Event, Operation, Position};
    /// # let event = Event {
    /// #     id: "e1".into(), position: Position { txid: 812, seq: 5 }, operation: Operation::Insert,
    /// #     schema: "public".into(), table: "items".into(), key: Some(r#"{"id":7}"#.into()),
    /// #     new_row: Some(r#"{"id":7}"#.into()), old_row: None,
    /// #     captured_at: "2025-01-01T00:00:00.000000Z".into(),
    /// #     context: Context { user: "app".into(), application_name: "psql".into(), tag: None },
    /// #     attempt: 1,
    /// # };
    /// let fields = event.fields();
    /// assert_eq!(fields[1], ("txid".to_string(), "812".to_string()));
    /// assert_eq!(fields[3], ("op".to_string(), "insert".to_string()));
    /// assert_eq!(fields[8], ("old".to_string(), String::new()));
    /// ```
    pub fn fields(&self) -> Vec<(String, String)> {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        [
            ("id", self.id.clone()),
            ("txid", self.position.txid.to_string()),
            ("seq", self.position.seq.to_string()),
            ("op", self.operation.as_str().to_owned()),
            ("schema", self.schema.clone()),
            ("table", self.table.clone()),
            ("key", text(&self.key)),
            ("new", text(&self.new_row)),
            ("old", text(&self.old_row)),
            ("attempt", self.attempt.to_string()),
            ("user", self.context.user.clone()),
            ("application_name", self.context.application_name.clone()),
            ("tag", text(&self.context.tag)),
            ("captured_at", self.captured_at.clone()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }
}

thread_local! {
    /// The last sequence number a built event took, per thread (per test).
    static LAST_SEQ: Cell<u64> = const { Cell::new(0) };
}

/// `value` as JSON text; a value serde cannot write as JSON is a bug in the test.
fn json_text(value: impl Serialize, what: &str) -> String {
    serde_json::to_string(&value)
        .unwrap_or_else(|err| panic!("the {what} of a test event is not JSON: {err}"))
}

/// Events built for a plugin's own tests, as the host would deliver them.
///
/// `table` is `"schema.table"`, or a table in `public`. Rows and keys are
/// anything serde writes as a JSON object: `serde_json::json!({...})` or a
/// row struct. Each event gets the next id (`test-1`, `test-2`, ... per
/// thread) and sequence number, transaction 1, attempt 1, no key, and user
/// `app`; the `with_*` methods change them.
///
/// ```
/// use pgevents_plugin_sdk::{Event, Operation};
/// use serde_json::json;
///
/// let event = Event::update("shop.orders", json!({"id": 7, "qty": 1}), json!({"id": 7, "qty": 2}))
///     .with_key(json!({"id": 7}))
///     .with_attempt(3)
///     .with_tag("backfill");
/// assert_eq!((event.schema.as_str(), event.table.as_str()), ("shop", "orders"));
/// assert_eq!(event.operation, Operation::Update);
/// assert_eq!(event.old_row.as_deref(), Some(r#"{"id":7,"qty":1}"#));
/// assert_eq!(event.key.as_deref(), Some(r#"{"id":7}"#));
/// assert_eq!((event.attempt, event.context.tag.as_deref()), (3, Some("backfill")));
///
/// let next = Event::delete("orders", json!({"id": 7}));
/// assert_eq!(next.schema, "public");
/// assert!(next.position.seq > event.position.seq);
/// ```
impl Event {
    fn built(operation: Operation, table: &str, old: Option<String>, new: Option<String>) -> Event {
        let (schema, table) = table.split_once('.').unwrap_or(("public", table));
        let seq = LAST_SEQ.get() + 1;
        LAST_SEQ.set(seq);
        Event {
            id: format!("test-{seq}"),
            position: Position { txid: 1, seq },
            operation,
            schema: schema.to_owned(),
            table: table.to_owned(),
            key: None,
            new_row: new,
            old_row: old,
            captured_at: "2026-01-01T00:00:00.000000Z".to_owned(),
            context: Context {
                user: "app".to_owned(),
                application_name: String::new(),
                tag: None,
            },
            attempt: 1,
        }
    }

    /// An insert of `row` into `table`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::Event;
    ///
    /// let event = Event::insert("public.items", serde_json::json!({"id": 1, "name": "anvil"}));
    /// assert_eq!(event.new_row.as_deref(), Some(r#"{"id":1,"name":"anvil"}"#));
    /// ```
    pub fn insert(table: &str, row: impl Serialize) -> Event {
        Self::built(
            Operation::Insert,
            table,
            None,
            Some(json_text(row, "new row")),
        )
    }

    /// An update of `table` from `old` to `new`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::Event;
    ///
    /// let event = Event::update("items", serde_json::json!({"n": 1}), serde_json::json!({"n": 2}));
    /// assert!(event.old_row.is_some() && event.new_row.is_some());
    /// ```
    pub fn update(table: &str, old: impl Serialize, new: impl Serialize) -> Event {
        let old = Some(json_text(old, "old row"));
        Self::built(
            Operation::Update,
            table,
            old,
            Some(json_text(new, "new row")),
        )
    }

    /// A delete of `row` from `table`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::Event;
    ///
    /// let event = Event::delete("items", serde_json::json!({"id": 1}));
    /// assert!(event.new_row.is_none());
    /// ```
    pub fn delete(table: &str, row: impl Serialize) -> Event {
        Self::built(
            Operation::Delete,
            table,
            Some(json_text(row, "old row")),
            None,
        )
    }

    /// A truncate of `table`: no rows, no key.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Event, Operation};
    ///
    /// assert_eq!(Event::truncate("items").operation, Operation::Truncate);
    /// ```
    pub fn truncate(table: &str) -> Event {
        Self::built(Operation::Truncate, table, None, None)
    }

    /// The same event with primary-key values `key`.
    pub fn with_key(mut self, key: impl Serialize) -> Event {
        self.key = Some(json_text(key, "key"));
        self
    }

    /// The same event as delivery attempt `attempt` (1 is the first).
    pub fn with_attempt(mut self, attempt: u32) -> Event {
        self.attempt = attempt;
        self
    }

    /// The same event with the writer's `SET LOCAL pgevents.context` tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Event {
        self.context.tag = Some(tag.into());
        self
    }

    /// The same event written by database user `user`.
    pub fn with_user(mut self, user: impl Into<String>) -> Event {
        self.context.user = user.into();
        self
    }

    /// The same event with id `id`.
    pub fn with_id(mut self, id: impl Into<String>) -> Event {
        self.id = id.into();
        self
    }

    /// The same event written by transaction `txid`.
    pub fn with_txid(mut self, txid: u64) -> Event {
        self.position.txid = txid;
        self
    }
}
