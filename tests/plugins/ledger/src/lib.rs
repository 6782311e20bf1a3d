//! Test plugin: writes one row into `public.ledger` per event of `public.items`
//! (insert, update, delete), through the host's `sql` interface:
//!
//! ```sql
//! INSERT INTO public.ledger (event_id, txid, seq, op, item_id, attempt)
//! VALUES ($1, $2, $3, $4, $5, $6)
//! ```
//!
//! with the event id as text (the column is a uuid), the position, the
//! lowercase operation, the `id` from the event's key (null if absent) and the
//! delivery attempt. A failed insert is `Failure::retry` at that event.
//!
//! The `note` column of the new row (absent for deletes) adds a twist:
//!
//! | note               | behaviour                                                  |
//! |--------------------|------------------------------------------------------------|
//! | `sql-error`        | first run `SELECT 1/0`; log info "sql error" with its      |
//! |                    | `sqlstate` and `message`, then insert as usual             |
//! | `denied`           | first insert into `public.forbidden`; log info "sql error" |
//! |                    | with its `sqlstate` and `message`, then insert as usual    |
//! | `fail-after-write` | insert, then `Failure::retry` on attempt 1 (the host must  |
//! |                    | roll this event's insert back and keep the prefix's)       |
//! | anything else      | insert                                                     |
//!
//! If a statement that should fail (`sql-error`, `denied`) succeeds, the event
//! fails with `Failure::permanent`, so a test cannot miss it.

const VERSION: &str = "1.0.0";

include!("plugin.rs");
