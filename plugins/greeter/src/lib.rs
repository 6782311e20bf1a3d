//! Welcomes every new user account: the smallest useful plugin.

use pgevents_plugin_sdk::{
    Event, Failure, Manifest, Operation, Plugin, Subscription, export_plugin, log,
};
use serde::Deserialize;

/// A row of `public.user_accounts`; columns the plugin doesn't name are ignored.
#[derive(Deserialize)]
struct UserAccount {
    id: i64,
    name: String,
    #[expect(dead_code, reason = "shows that a nullable column maps to an Option")]
    email: Option<String>,
}

struct Greeter;

impl Plugin for Greeter {
    fn manifest() -> Manifest {
        Manifest::new("greeter", "1.0.0")
            .subscribe(Subscription::to("public", "user_accounts").on(&[Operation::Insert]))
            .batch_size(100)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for (i, event) in events.iter().enumerate() {
            // Retrying cannot fix a row that doesn't decode, so it is permanent.
            let user: UserAccount = match event.new_row() {
                Ok(Some(user)) => user,
                Ok(None) => {
                    return Err(Failure::permanent(
                        i,
                        format!("event {}: insert without a new row", event.id),
                    ));
                }
                Err(err) => {
                    return Err(Failure::permanent(
                        i,
                        format!(
                            "event {}: new row of {}.{} is not a user account: {err}",
                            event.id, event.schema, event.table
                        ),
                    ));
                }
            };
            log::info_with(
                format!("Welcome, {}!", user.name),
                &[("user_id", user.id.to_string())],
            );
        }
        Ok(())
    }
}

export_plugin!(Greeter);
