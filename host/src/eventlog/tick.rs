//! Ticks: numbering the transactions that committed since the last tick (see the module doc of `eventlog`).

use tokio_postgres::GenericClient;

use crate::schema::SCHEMA;

/// The last tick's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// The highest transaction number handed out so far.
    pub last_ord: i64,
    /// How many ticks have numbered transactions (changes when one did).
    pub ticks: i64,
}

/// Take a tick (see the module doc): number the transactions that became
/// visible since the last one. With `look_first`, cheap and without writes
/// when there are none; without, a little quicker when there surely are
/// (after a NOTIFY).
pub async fn tick(
    client: &impl GenericClient,
    look_first: bool,
) -> Result<Tick, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT last_ord, ticks FROM {SCHEMA}.tick($1)"),
            &[&look_first],
        )
        .await?;
    Ok(Tick {
        last_ord: row.get(0),
        ticks: row.get(1),
    })
}
