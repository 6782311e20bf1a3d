// Row type of public.everything, written by `pgevents-host codegen` from the live
// catalog. Write it again when the table changes.

/// A row of `public.everything`, as events carry it (`event.new_row::<EverythingRow>()`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct EverythingRow {
    /// `id` bigint not null, primary key
    pub id: i64,
    /// `small` smallint not null
    pub small: i16,
    /// `count` integer
    #[serde(default)]
    pub count: Option<i32>,
    /// `ratio` double precision
    #[serde(default)]
    pub ratio: Option<f64>,
    /// `amount` numeric(50,12)
    #[serde(default)]
    pub amount: Option<pgevents_plugin_sdk::types::Decimal>,
    /// `name` text not null
    pub name: String,
    /// `code` character varying(8)
    #[serde(default)]
    pub code: Option<String>,
    /// `flag` boolean
    #[serde(default)]
    pub flag: Option<bool>,
    /// `at` timestamp with time zone (timestamptz, UTC: 2024-05-06T07:08:09.123456+00:00)
    #[serde(default)]
    pub at: Option<String>,
    /// `local_at` timestamp without time zone (timestamp: 2024-05-06T07:08:09.123456)
    #[serde(default)]
    pub local_at: Option<String>,
    /// `day` date (date: 2024-05-06)
    #[serde(default)]
    pub day: Option<String>,
    /// `clock` time without time zone (time: 07:08:09)
    #[serde(default)]
    pub clock: Option<String>,
    /// `span` interval (interval: 1 day 02:00:00)
    #[serde(default)]
    pub span: Option<String>,
    /// `uid` uuid (uuid)
    #[serde(default)]
    pub uid: Option<String>,
    /// `doc` json
    #[serde(default)]
    pub doc: Option<pgevents_plugin_sdk::serde_json::Value>,
    /// `data` jsonb
    #[serde(default)]
    pub data: Option<pgevents_plugin_sdk::serde_json::Value>,
    /// `raw` bytea (bytea, hex: \\x00ff)
    #[serde(default)]
    pub raw: Option<String>,
    /// `price` money (money: $1,234.50)
    #[serde(default)]
    pub price: Option<String>,
    /// `scores` integer[]
    #[serde(default)]
    pub scores: Option<Vec<Option<i32>>>,
    /// `tags` text[]
    #[serde(default)]
    pub tags: Option<Vec<Option<String>>>,
    /// `mood` mood
    #[serde(default)]
    pub mood: Option<Mood>,
    /// `moods` mood[]
    #[serde(default)]
    pub moods: Option<Vec<Option<Mood>>>,
    /// `Weird Name` text
    #[serde(rename = "Weird Name")]
    #[serde(default)]
    pub weird_name: Option<String>,
    /// `type` text
    #[serde(rename = "type")]
    #[serde(default)]
    pub type_: Option<String>,
    /// `Type` oid (oid)
    #[serde(rename = "Type")]
    #[serde(default)]
    pub type_2: Option<String>,
}

/// The enum `mood`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Mood {
    #[serde(rename = "happy")]
    Happy,
    #[serde(rename = "sad")]
    Sad,
    #[serde(rename = "so-so")]
    SoSo,
    #[serde(rename = "Self")]
    VSelf,
}
