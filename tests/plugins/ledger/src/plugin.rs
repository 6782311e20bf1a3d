// The plugin, shared with `ledger-v2` (which differs only in its version).

use pgevents_plugin_sdk::sql::{self, SqlError, Value};
use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, export_plugin, log,
};
use serde::Deserialize;

const INSERT_LEDGER: &str = "INSERT INTO public.ledger (event_id, txid, seq, op, item_id, attempt) \
                             VALUES ($1, $2, $3, $4, $5, $6)";

#[derive(Deserialize)]
struct Row {
    note: Option<String>,
}

#[derive(Deserialize)]
struct Key {
    id: i64,
}

struct Ledger;

impl Plugin for Ledger {
    fn manifest() -> Manifest {
        Manifest::new("ledger", VERSION)
            .subscribe(Subscription::to("public", "items").on(&[
                Operation::Insert,
                Operation::Update,
                Operation::Delete,
            ]))
            .batch_size(100)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for (i, event) in events.iter().enumerate() {
            // Deletes and rows without a string `note` behave normally.
            let note = event
                .new_row::<Row>()
                .ok()
                .flatten()
                .and_then(|row| row.note)
                .unwrap_or_default();
            let item_id = event.key::<Key>().ok().flatten().map(|key| key.id);

            match note.as_str() {
                "sql-error" => expect_error(i, sql::execute("SELECT 1/0", &[]))?,
                "denied" => expect_error(
                    i,
                    sql::execute(
                        "INSERT INTO public.forbidden (id) VALUES ($1)",
                        &[item_id.into()],
                    ),
                )?,
                _ => {}
            }

            let params = [
                event.id.as_str().into(),
                bigint(i, "txid", event.position.txid)?,
                bigint(i, "seq", event.position.seq)?,
                event.operation.as_str().into(),
                item_id.into(),
                event.attempt.into(),
            ];
            sql::execute(INSERT_LEDGER, &params)
                .map_err(|err| Failure::retry(i, format!("ledger insert failed: {err}")))?;

            if note == "fail-after-write" && event.attempt == 1 {
                return Err(Failure::retry(i, "note says fail-after-write"));
            }
        }
        Ok(())
    }
}

/// Logs the error a statement was meant to raise; fails the event if there was none.
fn expect_error<T>(i: usize, result: Result<T, SqlError>) -> Result<(), Failure> {
    match result {
        Err(err) => {
            log::info_with(
                "sql error",
                &[("sqlstate", err.sqlstate), ("message", err.message)],
            );
            Ok(())
        }
        Ok(_) => Err(Failure::permanent(
            i,
            "a statement that should have failed succeeded",
        )),
    }
}

/// Positions are PostgreSQL bigints, so they always fit; fail loudly if not.
fn bigint(i: usize, name: &str, n: u64) -> Result<Value, Failure> {
    i64::try_from(n)
        .map(Value::Int)
        .map_err(|_| Failure::permanent(i, format!("{name} {n} does not fit a bigint")))
}

export_plugin!(Ledger);
