//! `new`: a plugin project in a folder of its own — manifest, a sample
//! handler, the build command, sample events its test runs on, a README —
//! that builds with nothing but its language's toolchain: the binary carries
//! the WIT and the SDK sources it needs.

use std::path::{Path, PathBuf};

use super::catalog::Column;
use super::codegen::{self, Lang};
use super::{Operation, RecordedEvent, RecordedPosition};

mod rust;

/// The plugin world, as this binary was built with it.
const WIT: &str = include_str!("../../../../wit/plugin.wit");
/// `(path, text)` of repository files, by the same path in a new project.
macro_rules! repository_files {
    ($($path:literal),* $(,)?) => {
        [$(($path, include_str!(concat!("../../../../", $path)))),*]
    };
}
/// The worlds with outbound HTTP, for componentize-py: `wit/http/` and its
/// dependencies (WASI 0.2.12 here, and the plugin package, [`WIT`]).
const WIT_HTTP: [(&str, &str); 8] = repository_files![
    "wit/http/world.wit",
    "wit/http/deps/cli/cli.wit",
    "wit/http/deps/clocks/clocks.wit",
    "wit/http/deps/filesystem/filesystem.wit",
    "wit/http/deps/http/http.wit",
    "wit/http/deps/io/io.wit",
    "wit/http/deps/random/random.wit",
    "wit/http/deps/sockets/sockets.wit",
];
/// The Python SDK (one module).
const PYTHON_SDK: &str = include_str!("../../../../plugin-sdk/python/pgevents_sdk.py");
/// The JavaScript SDK (put in front of the plugin's module by its build).
const JS_SDK: &str = include_str!("../../../../plugin-sdk/js/pgevents-sdk.js");
/// Its `sql` part, for the `sql-handler` world.
const JS_SDK_SQL: &str = include_str!("../../../../plugin-sdk/js/pgevents-sdk-sql.js");
/// Its `publish` part, for the `publisher` world.
const JS_SDK_PUBLISH: &str = include_str!("../../../../plugin-sdk/js/pgevents-sdk-publish.js");
/// Its `http` part, for a component with the wasi:http import.
const JS_SDK_HTTP: &str = include_str!("../../../../plugin-sdk/js/pgevents-sdk-http.js");
/// The componentize-js set-up the SDK is built and tested with.
const JS_PACKAGE: &str = include_str!("../../../../plugins/greeter-js/package.json");

/// The componentize-py version the SDK is built and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// A table the new plugin subscribes to, with its columns if it is typed.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
    /// A row of it, rendered as the host renders rows, for the sample events.
    pub sample_row: String,
}

/// What `new` writes.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    pub name: String,
    pub lang: Lang,
    /// Empty: an untyped handler subscribed to `public.user_accounts`.
    pub tables: Vec<TableSpec>,
}

/// The folder's files, by path relative to it.
pub fn files(plugin: &NewPlugin) -> Result<Vec<(PathBuf, String)>, String> {
    let name = &plugin.name;
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || !name.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return Err(format!(
            "`{name}` cannot name a plugin: use letters, digits, `-` and `_`, starting with a letter"
        ));
    }
    match plugin.lang {
        Lang::Rust => Ok(rust::files(plugin)),
        Lang::Python => Ok(python(plugin)),
        Lang::Js => Ok(js(plugin)),
        Lang::Ts => Err(
            "`new` writes JavaScript projects (--lang js; componentize-js builds JavaScript); \
             `codegen --lang ts` writes TypeScript row types"
                .into(),
        ),
    }
}

/// Write the project into `dir` (which must not exist yet).
pub fn write(dir: &Path, files: &[(PathBuf, String)]) -> anyhow::Result<()> {
    if dir.exists() {
        anyhow::bail!(
            "{} exists already; give a new folder (nothing was written)",
            dir.display()
        );
    }
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// The commands that build and test the new project, from its folder.
pub fn next_steps(plugin: &NewPlugin) -> String {
    let module = crate_name(&plugin.name);
    match plugin.lang {
        Lang::Rust => format!(
            "cargo build --release --target wasm32-wasip2 && pgevents-host test target/wasm32-wasip2/release/{module}.wasm events.jsonl"
        ),
        _ => format!("./build.sh && pgevents-host test {module}.wasm events.jsonl"),
    }
}

/// `my-plugin` → `my_plugin` (the crate and the `.wasm` file).
fn crate_name(name: &str) -> String {
    name.replace('-', "_")
}

fn sample_events(plugin: &NewPlugin) -> String {
    let mut lines = vec![
        "# Events for `pgevents-host test` (one JSON object per line; `pgevents-host events export`"
            .to_owned(),
        "# writes real ones). See docs/plugins/testing.md of pgevents-host.".to_owned(),
    ];
    let tables: Vec<(String, String, String)> = if plugin.tables.is_empty() {
        vec![(
            "public".into(),
            "user_accounts".into(),
            r#"{"id": 1, "name": "Ada"}"#.into(),
        )]
    } else {
        plugin
            .tables
            .iter()
            .map(|t| (t.schema.clone(), t.table.clone(), t.sample_row.clone()))
            .collect()
    };
    for (n, (schema, table, row)) in tables.iter().enumerate() {
        let n = n as u64 + 1;
        let row =
            || Some(serde_json::value::RawValue::from_string(row.clone()).expect("a row is JSON"));
        for (seq, (operation, new_row, old_row)) in [
            (Operation::Insert, row(), None),
            (Operation::Update, row(), row()),
            (Operation::Delete, None, row()),
        ]
        .into_iter()
        .enumerate()
        {
            // The rows stay raw JSON text: a numeric keeps every digit.
            let event = RecordedEvent {
                id: None,
                position: Some(RecordedPosition {
                    txid: n,
                    seq: seq as i64 + 1,
                }),
                operation,
                schema: schema.clone(),
                table: table.clone(),
                key: None,
                new_row,
                old_row,
                captured_at: None,
                context: Default::default(),
                attempt: None,
            };
            lines.push(serde_json::to_string(&event).expect("an event encodes"));
        }
    }
    lines.join("\n") + "\n"
}

fn python(plugin: &NewPlugin) -> Vec<(PathBuf, String)> {
    let name = &plugin.name;
    let module = crate_name(name);
    let mut files = vec![
        ("pgevents_sdk.py".into(), PYTHON_SDK.to_owned()),
        ("wit/plugin.wit".into(), WIT.into()),
        ("events.jsonl".into(), sample_events(plugin)),
        (
            ".gitignore".into(),
            format!("/{module}.wasm\n__pycache__/\n/.pgevents/\n"),
        ),
        (
            "build.sh".into(),
            format!(
                "#!/bin/sh\n# Builds {module}.wasm with componentize-py {COMPONENTIZE_PY_VERSION} \
                 (pip install componentize-py=={COMPONENTIZE_PY_VERSION}),\n\
                 # against the world $WORLD: handler-only (the default), sql-handler for pg.sql,\n\
                 # http-handler for pg.http, sql-http-handler for both, publisher for pg.publish, or\n\
                 # plugin for sql and publish (the operator then grants the plugin `sql = {{ role = \"...\" }}`,\n\
                 # `http = {{ allow = [\"host:port\"] }}`, `publish = [\"SINK\"]`).\n\
                 set -e\ncd \"$(dirname \"$0\")\"\n\
                 WORLD=\"${{WORLD:-handler-only}}\"\nWIT=wit\n\
                 case \"$WORLD\" in *http-handler) WIT=wit/http ;; esac\n\
                 \"${{COMPONENTIZE_PY:-componentize-py}}\" -d \"$WIT\" -w \"$WORLD\" componentize app -o {module}.wasm\n\
                 rm -rf __pycache__\n"
            ),
        ),
    ];
    files.extend(
        WIT_HTTP
            .iter()
            .map(|(path, text)| (path.into(), (*text).to_owned())),
    );
    // A copy, where the repository has a symlink.
    files.push((
        "wit/http/deps/pgevents-plugin/plugin.wit".into(),
        WIT.into(),
    ));
    let (import, subscriptions, decode) = if plugin.tables.is_empty() {
        (
            String::new(),
            "        # Your table here; the host refuses a plugin whose table is missing.\n        \
             pg.subscribe(\"public\", \"user_accounts\"),\n"
                .to_owned(),
            "        row = event.new  # a dict (numbers with a fraction as Decimal), or None\n".to_owned(),
        )
    } else {
        let mut rows = String::new();
        for t in &plugin.tables {
            let first = rows.is_empty();
            rows.push_str(&codegen::generate(
                &t.schema,
                &t.table,
                &t.columns,
                Lang::Python,
                first,
            ));
        }
        files.push(("rows.py".into(), rows));
        let types: Vec<String> = plugin
            .tables
            .iter()
            .map(|t| format!("{}Row", codegen::camel(&t.table)))
            .collect();
        let subs: String = plugin
            .tables
            .iter()
            .map(|t| format!("        pg.subscribe({:?}, {:?}),\n", t.schema, t.table))
            .collect();
        let kinds: String = plugin
            .tables
            .iter()
            .zip(&types)
            .map(|(t, ty)| format!("    ({:?}, {:?}): {ty},\n", t.schema, t.table))
            .collect();
        (
            format!("from rows import {}\n\n# Each table's row type.\nROWS = {{\n{kinds}}}\n", types.join(", ")),
            subs,
            "        # Typed rows from the live catalog (rows.py, by `pgevents-host codegen`).\n        \
             kind = ROWS.get((event.schema, event.table))\n        \
             row = kind.from_row(event.new) if kind and event.new is not None else event.new\n"
                .to_owned(),
        )
    };
    files.push((
        "app.py".into(),
        format!(
            r#""""The `{name}` plugin for pgevents-host: called with every row change."""

import pgevents_sdk as pg
{import}

class Handler(pg.Plugin):
    name = "{name}"
    version = "0.1.0"
    subscriptions = [
{subscriptions}    ]

    def handle_event(self, event: pg.Event) -> None:
        # Raise pg.Failure.retry(...), .retry_after(ms, ...) or .permanent(...)
        # to fail this event; any other exception is retried, with its message.
{decode}        pg.log.info(f"{{event.operation}} on {{event.schema}}.{{event.table}}", id=event.id, row=row)
"#
        ),
    ));
    files.push((
        "README.md".into(),
        format!(
            r#"# {name}

A pgevents-host plugin in Python (written by `pgevents-host new`).

```sh
pip install componentize-py=={COMPONENTIZE_PY_VERSION}     # once
./build.sh                                  # writes {module}.wasm
pgevents-host test {module}.wasm events.jsonl
cp {module}.wasm /path/to/plugins/          # the running host loads it
```

- `app.py`: the manifest (`subscriptions`) and `handle_event`.
- `events.jsonl`: events `pgevents-host test` calls the handler with; record real ones with
  `pgevents-host events export --plugin {name} --ago 1h -o events.jsonl`.
- `pgevents_sdk.py`, `wit/`: the SDK and the plugin world, as the host that wrote this
  project speaks them.
- Database access: `pg.sql.execute/query/query_one("... $1", value)` in the handler, built
  with `WORLD=sql-handler ./build.sh`; the operator grants it (`sql = {{ role = "..." }}`).
- HTTP: `pg.http.post(url, json=body).check()`, built with `WORLD=http-handler ./build.sh`
  (`sql-http-handler` for both); the operator grants it (`http = {{ allow = ["host:port"] }}`).
- Messages: `pg.publish("bus", subject, payload, key=...)` for the event being handled, built
  with `WORLD=publisher ./build.sh`; the operator grants it (`publish = ["bus"]`).
"#
        ),
    ));
    files
}

fn js(plugin: &NewPlugin) -> Vec<(PathBuf, String)> {
    let name = &plugin.name;
    let module = crate_name(name);
    let package: serde_json::Value = serde_json::from_str(JS_PACKAGE).expect("package.json");
    let package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "description": format!("The {name} plugin for pgevents-host"),
        "devDependencies": package["devDependencies"],
    });
    let mut files = vec![
        ("pgevents-sdk.js".into(), JS_SDK.to_owned()),
        ("pgevents-sdk-sql.js".into(), JS_SDK_SQL.to_owned()),
        ("pgevents-sdk-http.js".into(), JS_SDK_HTTP.to_owned()),
        ("pgevents-sdk-publish.js".into(), JS_SDK_PUBLISH.to_owned()),
        ("wit/plugin.wit".into(), WIT.into()),
        ("events.jsonl".into(), sample_events(plugin)),
        (
            "package.json".into(),
            serde_json::to_string_pretty(&package).expect("JSON") + "\n",
        ),
        (
            ".gitignore".into(),
            format!("/{module}.wasm\n/build/\nnode_modules/\n/.pgevents/\n"),
        ),
    ];
    let (rows_file, subscriptions, decode) = if plugin.tables.is_empty() {
        (
            "",
            "    // Your table here; the host refuses a plugin whose table is missing.\n    \
             subscribe('public', 'user_accounts'),\n"
                .to_owned(),
            "    const row = event.new; // the row after the change (JSON.parse), or undefined\n"
                .to_owned(),
        )
    } else {
        let mut rows = String::new();
        for t in &plugin.tables {
            let first = rows.is_empty();
            rows.push_str(&codegen::generate(
                &t.schema,
                &t.table,
                &t.columns,
                Lang::Js,
                first,
            ));
        }
        files.push(("rows.js".into(), rows));
        let subs: String = plugin
            .tables
            .iter()
            .map(|t| format!("    subscribe({:?}, {:?}),\n", t.schema, t.table))
            .collect();
        let parsers: String = plugin
            .tables
            .iter()
            .map(|t| {
                format!(
                    "      {}: parse{}Row,\n",
                    serde_json::to_string(&format!("{}.{}", t.schema, t.table)).expect("JSON"),
                    codegen::camel(&t.table)
                )
            })
            .collect();
        (
            " rows.js",
            subs,
            format!(
                "    // Typed rows from the live catalog (rows.js, by `pgevents-host codegen`).\n    \
                 const parse = {{\n{parsers}    }}[`${{event.schema}}.${{event.table}}`];\n    \
                 const row = event.newRow === undefined ? undefined : parse ? parse(event.newRow) : event.new;\n"
            ),
        )
    };
    files.push((
        "build.sh".into(),
        format!(
            "#!/bin/sh\n# Builds {module}.wasm with componentize-js (npm install, once), against the\n\
             # world $WORLD: handler-only (the default), sql-handler for `sql` (with pgevents-sdk-sql.js;\n\
             # the operator then grants the plugin `sql = {{ role = \"...\" }}`), publisher for `publish`\n\
             # (pgevents-sdk-publish.js; `publish = [\"SINK\"]`), or plugin for both.\n\
             # HTTP=1 keeps the wasi:http import for `http` (with pgevents-sdk-http.js; the operator\n\
             # then grants `http = {{ allow = [\"host:port\"] }}`). componentize-js builds one module:\n\
             # the SDK{rows_note} and app.js go into build/plugin.js first.\n\
             set -e\ncd \"$(dirname \"$0\")\"\nmkdir -p build\n\
             WORLD=\"${{WORLD:-handler-only}}\"\nSDK=pgevents-sdk.js\nFEATURES=\"http fetch-event\"\n\
             case \"$WORLD\" in sql-handler|plugin) SDK=\"$SDK pgevents-sdk-sql.js\" ;; esac\n\
             case \"$WORLD\" in publisher|plugin) SDK=\"$SDK pgevents-sdk-publish.js\" ;; esac\n\
             if [ \"${{HTTP:-0}}\" = 1 ]; then SDK=\"$SDK pgevents-sdk-http.js\"; FEATURES=fetch-event; fi\n\
             cat $SDK{rows_file} app.js > build/plugin.js\n\
             \"${{COMPONENTIZE_JS:-node_modules/.bin/componentize-js}}\" build/plugin.js -w wit -n \"$WORLD\" \\\n\
             \x20   -d $FEATURES -o {module}.wasm\n",
            rows_note = if rows_file.is_empty() { "" } else { ", rows.js" },
        ),
    ));
    files.push((
        "app.js".into(),
        format!(
            r#"// The `{name}` plugin for pgevents-host: called with every row change.
// build.sh puts pgevents-sdk.js (definePlugin, subscribe, Failure, log, config) in front.

export const handler = definePlugin({{
  name: '{name}',
  version: '0.1.0',
  subscriptions: [
{subscriptions}  ],

  handleEvent(event) {{
    // Throw Failure.retry(...), Failure.retryAfter(ms, ...) or Failure.permanent(...)
    // to fail this event; anything else thrown is retried, with its message.
{decode}    log.info(`${{event.operation}} on ${{event.schema}}.${{event.table}}`, {{ id: event.id, row: JSON.stringify(row) }});
  }},
}});
"#
        ),
    ));
    files.push((
        "README.md".into(),
        format!(
            r#"# {name}

A pgevents-host plugin in JavaScript (written by `pgevents-host new`).

```sh
npm install                                   # once: componentize-js, pinned
./build.sh                                    # writes {module}.wasm
pgevents-host test {module}.wasm events.jsonl
cp {module}.wasm /path/to/plugins/            # the running host loads it
```

- `app.js`: the manifest (`subscriptions`) and `handleEvent`.
- `events.jsonl`: events `pgevents-host test` calls the handler with; record real ones with
  `pgevents-host events export --plugin {name} --ago 1h -o events.jsonl`.
- `pgevents-sdk.js` (with `pgevents-sdk-sql.js`, `-http.js`, `-publish.js`), `wit/`: the SDK
  and the plugin world, as the host that wrote this project speaks them.
- Database access: `sql.execute/query/queryOne('... $1', value)` in the handler, built with
  `WORLD=sql-handler ./build.sh`; the operator grants it (`sql = {{ role = "..." }}`).
- HTTP: `await http.post(url, {{ json }})` in an `async handleEvent`, then `.check()`, built
  with `HTTP=1 ./build.sh`; the operator grants it (`http = {{ allow = ["host:port"] }}`).
- Messages: `publish('bus', subject, payload, {{ key }})` for the event being handled, built
  with `WORLD=publisher ./build.sh`; the operator grants it (`publish = ["bus"]`).
"#
        ),
    ));
    files
}
