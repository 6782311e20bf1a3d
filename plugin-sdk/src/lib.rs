//! Write `pgevents-host` plugins in Rust.
//!
//! A plugin is a WebAssembly component that the host calls with batches of row
//! changes. With this crate a plugin is a type implementing [`Plugin`] — a
//! [`Manifest`] saying which tables it wants, and a handler for the events —
//! plus one [`export_plugin!`] line:
//!
//! ```rust,standalone_crate
//! use pgevents_plugin_sdk::{export_plugin, log, Event, EventError, Manifest, Operation, Plugin, Subscription};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct UserAccount {
//!     id: i64,
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl Plugin for Greeter {
//!     fn manifest() -> Manifest {
//!         Manifest::new("greeter", "1.0.0")
//!             .subscribe(Subscription::to("public", "user_accounts").on(&[Operation::Insert]))
//!     }
//!
//!     // A row that does not decode fails this event permanently (`?`); the
//!     // events before it are acknowledged.
//!     fn handle_event(event: &Event) -> Result<(), EventError> {
//!         if let Some(user) = event.new_row::<UserAccount>()? {
//!             log::info_with(format!("Welcome, {}!", user.name), &[("user_id", user.id.to_string())]);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Greeter);
//!
//! // A native unit test calls the handler with events built for it.
//! # fn main() {
//! let failure = Greeter::handle(vec![
//!     Event::insert("user_accounts", serde_json::json!({"id": 1, "name": "Ada"})),
//!     Event::insert("user_accounts", serde_json::json!({"id": "two"})),
//! ])
//! .unwrap_err();
//! assert_eq!(failure.index, 1);
//! # }
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2` and drop the `.wasm` into the
//! host's plugin folder.
//!
//! Besides [`log`], a plugin the operator grants database access to can run
//! SQL with the [`sql`] module ([`sql::query_as`] decodes rows into your
//! types). Its statements commit in the same transaction
//! as the batch's acknowledgement, so their effects happen exactly once.
//! A plugin the operator grants sinks to can send messages to message buses
//! (NATS, RabbitMQ, Redis, MQTT) with the [`publish`] module: each message is
//! recorded in the host's outbox in that same transaction, so it exists if
//! and only if its event is acknowledged, and the host then delivers it to
//! the broker. A plugin granted HTTP sends requests with [`http`].
//! [`config`] reads the settings the operator gives the plugin.
//! A capability the plugin never calls is not imported, so it needs no grant.
//!
//! Compiled for any other target (for a plugin's own unit tests) the crate
//! still works: [`log`] then writes to standard error instead of calling the
//! host, [`sql`] statements fail with SQLSTATE `58000`, [`publish::send`]
//! records each message for the test to read with [`publish::sent`], and
//! [`http`] requests are answered by the test's [`http::respond_with`].
//! [`Event::insert`], [`Event::update`], [`Event::delete`] and
//! [`Event::truncate`] build events for such tests.

// Lets the paths baked into the generated bindings (`pgevents_plugin_sdk::...`)
// resolve both here and in the plugin crates that expand `export_plugin!`.
extern crate self as pgevents_plugin_sdk;

pub mod config;
mod each;
mod event;
mod failure;
pub mod http;
pub mod log;
mod manifest;
pub mod publish;
pub mod sql;
pub mod types;

/// Raw bindings generated from `wit/plugin.wit`; use the re-exports at the crate root.
#[doc(hidden)]
#[allow(unsafe_code, missing_debug_implementations)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "pgevents_plugin_sdk::bindings",
        // Plugin crates depend on this crate only, not on wit-bindgen.
        runtime_path: "pgevents_plugin_sdk::__private::wit_bindgen::rt",
    });
}

/// A kind of row change: insert, update, delete or truncate.
///
/// Displays as the lowercase WIT name:
///
/// ```
/// use pgevents_plugin_sdk::Operation;
///
/// assert_eq!(Operation::Update.to_string(), "update");
/// ```
pub use bindings::pgevents::plugin::types::Operation;

/// The table subscriptions, name and version of a plugin; built with [`Manifest::new`].
///
/// ```
/// use pgevents_plugin_sdk::{Manifest, Subscription};
///
/// let manifest = Manifest::new("audit", "1.0.0").subscribe(Subscription::to("public", "orders"));
/// assert_eq!(manifest.subscriptions.len(), 1);
/// ```
pub use bindings::pgevents::plugin::types::Manifest;

/// One table a plugin wants events from; built with [`Subscription::to`].
///
/// ```
/// use pgevents_plugin_sdk::{Operation, Subscription};
///
/// let inserts = Subscription::to("public", "user_accounts").on(&[Operation::Insert]);
/// assert_eq!(inserts.operations, [Operation::Insert]);
/// ```
pub use bindings::pgevents::plugin::types::Subscription;

/// One row change delivered to [`Plugin::handle`].
///
/// Rows and keys arrive as JSON text; [`Event::new_row`], [`Event::old_row`] and
/// [`Event::key`] decode them into your own types.
///
/// ```
/// use pgevents_plugin_sdk::Event;
///
/// fn is_first_attempt(event: &Event) -> bool {
///     event.attempt == 1
/// }
/// ```
pub use bindings::pgevents::plugin::types::Event;

/// Which event this is: its writing transaction and sequence number. Events
/// arrive in commit order, each transaction's together and by `seq`, not in
/// `(txid, seq)` order; use `txid` to group a transaction's events.
///
/// ```
/// use pgevents_plugin_sdk::Position;
///
/// let first = Position { txid: 8, seq: 40 };
/// let second = Position { txid: 8, seq: 41 };
/// assert!(first.txid == second.txid && first.seq < second.seq);
/// ```
pub use bindings::pgevents::plugin::types::Position;

/// Who wrote a change: database user, `application_name`, and the optional
/// tag the writer set with `SET LOCAL pgevents.context = '...'`.
///
/// ```
/// use pgevents_plugin_sdk::Event;
///
/// fn written_by_migration(event: &Event) -> bool {
///     event.context.tag.as_deref() == Some("migration")
/// }
/// ```
pub use bindings::pgevents::plugin::types::Context;

/// Why a batch failed, returned from [`Plugin::handle`]; built with
/// [`Failure::retry`], [`Failure::retry_after`] or [`Failure::permanent`].
///
/// Events before `index` are acknowledged; the event at `index` and
/// everything after it are not.
///
/// ```
/// use pgevents_plugin_sdk::Failure;
///
/// let failure = Failure::retry(3, "search index unavailable");
/// assert_eq!(failure.index, 3);
/// ```
pub use bindings::pgevents::plugin::types::Failure;

/// What the host should do with the event a [`Failure`] points at.
///
/// ```
/// use pgevents_plugin_sdk::{Disposition, Failure};
///
/// let failure = Failure::retry_after(0, 5_000, "rate limited");
/// assert!(matches!(failure.disposition, Disposition::Retry(Some(5_000))));
/// ```
pub use bindings::pgevents::plugin::types::Disposition;

/// A plugin: what it subscribes to, and what it does with the events.
///
/// Implement [`Plugin::handle_event`] to handle one event at a time (the
/// SDK computes the failing index), or [`Plugin::handle`] to see the whole
/// batch. Both are associated functions, not methods: each batch runs in a
/// fresh sandbox instance, so a plugin cannot keep state between batches.
/// Wire the type to the host with [`export_plugin!`].
///
/// ```
/// use pgevents_plugin_sdk::{log, Event, EventError, Manifest, Plugin, Subscription};
///
/// struct Audit;
///
/// impl Plugin for Audit {
///     fn manifest() -> Manifest {
///         Manifest::new("audit", "1.0.0").subscribe(Subscription::to("public", "orders"))
///     }
///
///     fn handle_event(event: &Event) -> Result<(), EventError> {
///         log::info_with(format!("{} {}.{}", event.operation, event.schema, event.table), &event.fields());
///         Ok(())
///     }
/// }
///
/// assert_eq!(Audit::manifest().name, "audit");
/// assert!(Audit::handle(vec![Event::truncate("public.orders")]).is_ok());
/// ```
pub trait Plugin {
    /// The plugin's name, version, subscriptions and batch size.
    ///
    /// Called once per load; it must not depend on events.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Manifest, Subscription};
    ///
    /// fn manifest() -> Manifest {
    ///     Manifest::new("audit", "1.0.0").subscribe(Subscription::to("public", "orders"))
    /// }
    /// # assert_eq!(manifest().version, "1.0.0");
    /// ```
    fn manifest() -> Manifest;

    /// Handles one event. The default [`Plugin::handle`] calls it for each
    /// event of a batch in delivery order and stops at the first error:
    /// the events before it are acknowledged, and the [`EventError`] says
    /// what happens to it and the rest (see [`handle_each`]). A panic (a
    /// trap) fails the whole batch and the host retries it.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Event, EventError};
    ///
    /// fn handle_event(event: &Event) -> Result<(), EventError> {
    ///     let row: serde_json::Value = event.new_row()?.ok_or_else(|| EventError::permanent("expected a row"))?;
    ///     if row["email"].is_null() {
    ///         return Err(EventError::permanent("row has no email"));
    ///     }
    ///     Ok(())
    /// }
    /// # assert!(handle_event(&Event::insert("users", serde_json::json!({"email": "a@b"}))).is_ok());
    /// ```
    fn handle_event(event: &Event) -> Result<(), EventError> {
        Err(EventError::permanent(format!(
            "event {}: this plugin implements neither handle nor handle_event",
            event.id
        )))
    }

    /// Handles one batch of events, in delivery order: every row's changes
    /// in the order they happened, across rows commit order. By default,
    /// [`Plugin::handle_event`] for each event.
    ///
    /// `Ok(())` acknowledges the whole batch. `Err(failure)` acknowledges the
    /// events before `failure.index` and hands the rest back to the host. A
    /// panic (a trap) fails the whole batch and the host retries it.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Event, Failure};
    ///
    /// fn handle(events: Vec<Event>) -> Result<(), Failure> {
    ///     for (i, event) in events.iter().enumerate() {
    ///         if event.new_row.is_none() {
    ///             return Err(Failure::permanent(i, "expected a row"));
    ///         }
    ///     }
    ///     Ok(())
    /// }
    /// # assert!(handle(Vec::new()).is_ok());
    /// ```
    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        handle_each(&events, Self::handle_event)
    }
}

pub use each::{EventError, handle_each};

/// Exports a [`Plugin`] type as the component's `handler`.
///
/// Use it once, at the top level of the plugin crate:
///
/// ```rust,standalone_crate
/// use pgevents_plugin_sdk::{export_plugin, Event, Failure, Manifest, Plugin, Subscription};
///
/// struct Noop;
///
/// impl Plugin for Noop {
///     fn manifest() -> Manifest {
///         Manifest::new("noop", "0.1.0").subscribe(Subscription::to("public", "items"))
///     }
///
///     fn handle(_events: Vec<Event>) -> Result<(), Failure> {
///         Ok(())
///     }
/// }
///
/// export_plugin!(Noop);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // The generated export glue is `unsafe` ABI code and wants an
        // identifier implementing the raw `Guest` trait; this private adapter
        // keeps both out of the plugin author's sight.
        #[allow(unsafe_code)]
        const _: () = {
            struct PgeventsPluginExport;

            impl $crate::__private::Guest for PgeventsPluginExport {
                fn describe() -> $crate::Manifest {
                    <$plugin as $crate::Plugin>::manifest()
                }

                fn handle(
                    events: ::std::vec::Vec<$crate::Event>,
                ) -> ::core::result::Result<(), $crate::Failure> {
                    <$plugin as $crate::Plugin>::handle(events)
                }
            }

            // Native linkers reject the component export names (`pkg:ns/iface#fn`),
            // so a native build of the plugin (its unit tests, `cargo build
            // --workspace`) leaves the exports out and still type-checks the rest.
            #[cfg(target_arch = "wasm32")]
            $crate::bindings::export! { PgeventsPluginExport with_types_in $crate::bindings }

            // Natively nothing calls the adapter; naming it keeps the plugin
            // type from being reported as dead code.
            #[cfg(not(target_arch = "wasm32"))]
            const _: (
                fn() -> $crate::Manifest,
                fn(::std::vec::Vec<$crate::Event>) -> ::core::result::Result<(), $crate::Failure>,
            ) = (
                <PgeventsPluginExport as $crate::__private::Guest>::describe,
                <PgeventsPluginExport as $crate::__private::Guest>::handle,
            );
        };
    };
}

/// Items `export_plugin!` expands to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::exports::pgevents::plugin::handler::Guest;
    pub use wit_bindgen;
}

/// The JSON library rows are decoded with (typed rows from `codegen` use its
/// `Value` for `json` columns).
pub use serde_json;
