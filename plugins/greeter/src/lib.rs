//! Welcomes every new user account: the smallest useful plugin.

use pgevents_plugin_sdk::{
    Event, EventError, Manifest, Operation, Plugin, Subscription, export_plugin, log,
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

    // Called for each event in turn; an error fails this event, and the
    // events before it are acknowledged.
    fn handle_event(event: &Event) -> Result<(), EventError> {
        // Retrying cannot fix a row that doesn't decode, so it is permanent.
        let user: UserAccount = event
            .new_row()
            .map_err(|err| {
                EventError::permanent(format!(
                    "event {}: new row of {}.{} is not a user account: {err}",
                    event.id, event.schema, event.table
                ))
            })?
            .ok_or_else(|| {
                EventError::permanent(format!("event {}: insert without a new row", event.id))
            })?;
        log::info_with(
            format!("Welcome, {}!", user.name),
            &[("user_id", user.id.to_string())],
        );
        Ok(())
    }
}

export_plugin!(Greeter);

#[cfg(test)]
mod tests {
    use super::*;
    use pgevents_plugin_sdk::serde_json::json;

    #[test]
    fn a_row_that_is_not_a_user_account_fails_permanently_at_its_own_index() {
        let failure = Greeter::handle(vec![
            Event::insert(
                "user_accounts",
                json!({"id": 1, "name": "Ada", "email": null}),
            ),
            Event::insert("user_accounts", json!({"id": 2})),
            Event::insert(
                "user_accounts",
                json!({"id": 3, "name": "Grace", "email": null}),
            ),
        ])
        .unwrap_err();
        assert_eq!(failure.index, 1);
        assert!(matches!(
            failure.disposition,
            pgevents_plugin_sdk::Disposition::Permanent
        ));
        assert!(
            failure.message.contains("is not a user account"),
            "{}",
            failure.message
        );
    }
}
