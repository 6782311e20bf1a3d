//! `new --lang rust`: a crate with a copy of the Rust SDK, which this binary carries.

use std::path::PathBuf;

use super::{NewPlugin, WIT, crate_name, sample_events};
use crate::authoring::codegen::{self, Lang};

const RUST_SDK: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../../../plugin-sdk/src/lib.rs")),
    (
        "config.rs",
        include_str!("../../../../plugin-sdk/src/config.rs"),
    ),
    (
        "each.rs",
        include_str!("../../../../plugin-sdk/src/each.rs"),
    ),
    (
        "event.rs",
        include_str!("../../../../plugin-sdk/src/event.rs"),
    ),
    (
        "failure.rs",
        include_str!("../../../../plugin-sdk/src/failure.rs"),
    ),
    (
        "http.rs",
        include_str!("../../../../plugin-sdk/src/http.rs"),
    ),
    ("log.rs", include_str!("../../../../plugin-sdk/src/log.rs")),
    (
        "manifest.rs",
        include_str!("../../../../plugin-sdk/src/manifest.rs"),
    ),
    (
        "publish.rs",
        include_str!("../../../../plugin-sdk/src/publish.rs"),
    ),
    ("sql.rs", include_str!("../../../../plugin-sdk/src/sql.rs")),
    (
        "types.rs",
        include_str!("../../../../plugin-sdk/src/types.rs"),
    ),
];

/// The SDK's manifest outside this repository's workspace.
const RUST_SDK_MANIFEST: &str = r#"[package]
name = "pgevents-plugin-sdk"
description = "Write pgevents-host plugins in Rust (the copy `pgevents-host new` wrote)"
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = { version = "1", features = ["raw_value"] }
wit-bindgen = "0.61"

[target.'cfg(target_arch = "wasm32")'.dependencies]
wasip2 = "1.0.4"
"#;

pub(super) fn files(plugin: &NewPlugin) -> Vec<(PathBuf, String)> {
    let name = &plugin.name;
    let krate = crate_name(name);
    let mut files = vec![
        (
            "Cargo.toml".into(),
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
pgevents-plugin-sdk = {{ path = "pgevents-sdk" }}
serde = {{ version = "1", features = ["derive"] }}

# A project of its own, even inside another workspace.
[workspace]

[profile.release]
lto = "thin"
"#
            ),
        ),
        ("pgevents-sdk/Cargo.toml".into(), RUST_SDK_MANIFEST.into()),
        ("wit/plugin.wit".into(), WIT.into()),
        ("events.jsonl".into(), sample_events(plugin)),
        (".gitignore".into(), "/target\n/.pgevents/\n".into()),
    ];
    for (file, text) in RUST_SDK {
        files.push((format!("pgevents-sdk/src/{file}").into(), (*text).into()));
    }
    let (subscriptions, arms, rows_mod) = if plugin.tables.is_empty() {
        (
            "            // Your table here; the host refuses a plugin whose table is missing.\n            \
             .subscribe(Subscription::to(\"public\", \"user_accounts\").on(&Operation::ALL))\n"
                .to_owned(),
            String::new(),
            String::new(),
        )
    } else {
        let mut rows = String::new();
        for t in &plugin.tables {
            let first = rows.is_empty();
            rows.push_str(&codegen::generate(
                &t.schema,
                &t.table,
                &t.columns,
                Lang::Rust,
                first,
            ));
        }
        files.push(("src/rows.rs".into(), rows));
        let subs: String = plugin
            .tables
            .iter()
            .map(|t| {
                format!(
                    "            .subscribe(Subscription::to({:?}, {:?}).on(&Operation::ALL))\n",
                    t.schema, t.table
                )
            })
            .collect();
        let arms: String = plugin
            .tables
            .iter()
            .map(|t| {
                format!(
                    "            ({:?}, {:?}) => format!(\"{{:?}}\", event.new_row::<rows::{}Row>()?),\n",
                    t.schema,
                    t.table,
                    codegen::camel(&t.table)
                )
            })
            .collect();
        (
            subs,
            arms,
            "/// Row types from the live catalog (`pgevents-host codegen`); write them again when a table changes.\nmod rows;\n\n".to_owned(),
        )
    };
    // The first table's sample row, for the project's native unit test.
    let (table, sample) = match plugin.tables.first() {
        Some(t) => (format!("{}.{}", t.schema, t.table), t.sample_row.clone()),
        None => (
            "public.user_accounts".to_owned(),
            r#"{"id": 1, "name": "Ada"}"#.to_owned(),
        ),
    };
    let sample = raw_string(&sample);
    files.push((
        "src/lib.rs".into(),
        format!(
            r#"//! The `{name}` plugin for pgevents-host: called with batches of row changes.

{rows_mod}use pgevents_plugin_sdk::{{
    Event, EventError, Manifest, Operation, Plugin, Subscription, export_plugin, log,
}};

struct Handler;

impl Plugin for Handler {{
    fn manifest() -> Manifest {{
        Manifest::new("{name}", "0.1.0")
{subscriptions}    }}

    // Called for each event of a batch in order. An error fails this event:
    // the events before it are acknowledged, and `EventError::retry(...)`,
    // `::retry_after(ms, ...)` or `::permanent(...)` says what happens next.
    fn handle_event(event: &Event) -> Result<(), EventError> {{
        // The row after the change (inserts, updates), as its table's row
        // type; `old_row` is the one before. A row that does not decode
        // fails permanently (`?`).
        let row = match (event.schema.as_str(), event.table.as_str()) {{
{arms}            _ => format!("{{:?}}", event.new_row::<pgevents_plugin_sdk::serde_json::Value>()?),
        }};
        log::info_with(
            format!("{{}} on {{}}.{{}}", event.operation, event.schema, event.table),
            &[("id", event.id.clone()), ("row", row)],
        );
        Ok(())
    }}
}}

export_plugin!(Handler);

// `cargo test` runs these natively; `Event::insert` & co. build events.
#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn the_sample_row_is_handled() {{
        let row: pgevents_plugin_sdk::serde_json::Value =
            pgevents_plugin_sdk::serde_json::from_str({sample}).unwrap();
        assert!(Handler::handle(vec![Event::insert({table:?}, row)]).is_ok());
    }}
}}
"#
        ),
    ));
    files.push((
        "README.md".into(),
        format!(
            r#"# {name}

A pgevents-host plugin in Rust (written by `pgevents-host new`).

```sh
cargo build --release --target wasm32-wasip2        # once: rustup target add wasm32-wasip2
pgevents-host test target/wasm32-wasip2/release/{krate}.wasm events.jsonl
cp target/wasm32-wasip2/release/{krate}.wasm /path/to/plugins/   # the running host loads it
```

- `src/lib.rs`: the manifest (tables and operations) and the handler.
- `events.jsonl`: events `pgevents-host test` calls the handler with; record real ones with
  `pgevents-host events export --plugin {name} --ago 1h -o events.jsonl`.
- `pgevents-sdk/`, `wit/`: the SDK and the plugin world, as the host that wrote this project
  speaks them (`cargo doc -p pgevents-plugin-sdk --open`).
"#
        ),
    ));
    files
}

/// `text` as a Rust raw string literal, with as many `#` as it needs.
fn raw_string(text: &str) -> String {
    let mut hashes = String::new();
    while text.contains(&format!("\"{hashes}")) {
        hashes.push('#');
    }
    format!("r{hashes}\"{text}\"{hashes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_carries_every_file_of_the_rust_sdk() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut carried: Vec<&str> = RUST_SDK.iter().map(|(name, _)| *name).collect();
        carried.sort();
        assert_eq!(on_disk, carried);
    }

    #[test]
    fn raw_strings_hold_any_text() {
        assert_eq!(raw_string("{}"), "r\"{}\"");
        assert_eq!(raw_string(r#"{"a":"b"}"#), "r#\"{\"a\":\"b\"}\"#");
        assert_eq!(raw_string(r##"x"#y"##), "r##\"x\"#y\"##");
    }
}
