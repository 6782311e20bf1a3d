//! Test plugin: decodes each inserted row of `public.everything` (a column
//! of every type the event format lists) with `EverythingRow`, which
//! `pgevents-host codegen --lang rust --table public.everything` wrote into
//! `rows.rs` (a test checks that the file is what codegen writes for the
//! table it creates). Logs "typed" with the row encoded again as JSON and
//! its numeric as text; a row that does not decode fails the event for good.

#[allow(clippy::all)]
mod rows;

use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, export_plugin, log,
};
use rows::EverythingRow;

struct Typed;

impl Plugin for Typed {
    fn manifest() -> Manifest {
        Manifest::new("typed", "1.0.0")
            .subscribe(Subscription::to("public", "everything").on(&[Operation::Insert]))
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for (i, event) in events.iter().enumerate() {
            let row: EverythingRow = match event.new_row() {
                Ok(Some(row)) => row,
                Ok(None) => return Err(Failure::permanent(i, "no new row")),
                Err(e) => return Err(Failure::permanent(i, format!("bad row: {e}"))),
            };
            let json = serde_json::to_string(&row).expect("a row encodes");
            let amount = row
                .amount
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default();
            log::info_with(
                "typed",
                &[
                    ("id", row.id.to_string()),
                    ("json", json),
                    ("amount", amount),
                    ("mood", format!("{:?}", row.mood)),
                ],
            );
        }
        Ok(())
    }
}

export_plugin!(Typed);
