//! A table's columns from the live catalog, for typed rows (`codegen`) and
//! sample events (`test` without an events file).

use tokio_postgres::Client;

use crate::schema::{quote_ident, quote_table};

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type`: `integer`, `numeric(10,2)`, `text[]`, `mood`.
    pub type_name: String,
    /// A built-in type its sample value is written as (a domain's base
    /// type, `text` for an enum), so that making one runs no code of the
    /// table owner's (a domain's CHECK, an enum's cast to json).
    pub sample_type: String,
    /// The type (for an array, its element type) by its catalog name:
    /// `int4`, `numeric`, `timestamptz`, `mood`.
    pub base: String,
    /// `pg_type.typcategory` of `base`: `N` number, `S` string, `B` boolean,
    /// `D` date/time, `T` interval, `E` enum, `U` user (uuid, json), ...
    pub category: char,
    pub array: bool,
    pub not_null: bool,
    /// An enum's labels, in order.
    pub labels: Vec<String>,
    pub primary_key: bool,
}

/// The columns of `schema.table`, in order; an error names a missing table.
pub async fn columns(client: &Client, schema: &str, table: &str) -> anyhow::Result<Vec<Column>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    CASE WHEN b.typtype = 'e' THEN CASE WHEN t.typcategory = 'A' THEN 'text[]' ELSE 'text' END
                         WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
                         ELSE format_type(a.atttypid, a.atttypmod) END,
                    b.typname::text, b.typcategory::text, t.typcategory = 'A',
                    a.attnotnull,
                    ARRAY(SELECT e.enumlabel::text FROM pg_enum e
                          WHERE e.enumtypid = b.oid ORDER BY e.enumsortorder),
                    EXISTS (SELECT FROM pg_index i
                            WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY (i.indkey))
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type t ON t.oid = a.atttypid
             JOIN pg_type b ON b.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem
                                            WHEN t.typtype = 'd' THEN t.typbasetype
                                            ELSE t.oid END
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
             ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await?;
    if rows.is_empty() {
        anyhow::bail!(
            "no table {} in this database (create it first, or check the name)",
            quote_table(schema, table)
        );
    }
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            sample_type: r.get(2),
            base: r.get(3),
            category: r.get::<_, String>(4).chars().next().unwrap_or('X'),
            array: r.get(5),
            not_null: r.get(6),
            labels: r.get(7),
            primary_key: r.get(8),
        })
        .collect())
}

/// A SQL expression giving a sample value of `c`'s type.
fn sample_value(c: &Column) -> String {
    let ty = &c.sample_type;
    if c.array {
        return format!("'{{}}'::{ty}");
    }
    match (c.category, c.base.as_str()) {
        ('E', _) => match c.labels.first() {
            Some(label) => format!("{}::{ty}", crate::schema::quote_literal(label)),
            None => format!("NULL::{ty}"),
        },
        // 0 fits every numeric(p, s).
        ('N', "oid") => format!("1::{ty}"),
        ('N', _) => format!("0::{ty}"),
        ('S', _) => format!("'sample'::{ty}"),
        ('B', _) => format!("true::{ty}"),
        ('D', _) => format!("'2026-01-01 12:00:00+00'::{ty}"),
        ('T', _) => format!("'01:00:00'::{ty}"),
        (_, "uuid") => format!("'00000000-0000-4000-8000-000000000001'::{ty}"),
        (_, "json" | "jsonb") => format!("'{{}}'::{ty}"),
        (_, "bytea") => format!("'\\x00'::{ty}"),
        _ => format!("NULL::{ty}"),
    }
}

/// A sample row of `schema.table` as the host renders rows: typed sample
/// values, rendered by `to_jsonb` with the settings capture pins. Never a
/// row of the table (it may hold data that should not land in a project's
/// files), and no code of the table owner's runs: the values are of
/// built-in types, and `search_path` is `pg_catalog` only.
pub async fn sample_row(client: &Client, schema: &str, table: &str) -> anyhow::Result<String> {
    let columns = columns(client, schema, table).await?;
    let values: Vec<String> = columns
        .iter()
        .map(|c| format!("{} AS {}", sample_value(c), quote_ident(&c.name)))
        .collect();
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(s)::pg_catalog.text FROM (SELECT {}) s",
        values.join(", ")
    );
    client
        .batch_execute(
            "BEGIN READ ONLY; SET LOCAL search_path = pg_catalog, pg_temp;
             SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD';
             SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1;
             SET LOCAL bytea_output = 'hex'; SET LOCAL lc_monetary = 'C'",
        )
        .await?;
    let row = client.query_one(&sql, &[]).await;
    client.batch_execute("ROLLBACK").await?;
    Ok(row?.get(0))
}
