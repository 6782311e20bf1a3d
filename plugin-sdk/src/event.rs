//! Decoding and describing [`Event`]s.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::{Event, Operation};

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
