//! `codegen`: row types for a table, from the live catalog, matching how
//! the host renders values (docs/event-format.md): numbers stay numbers,
//! `numeric` keeps its digits (as exact decimal text), timestamps, dates,
//! intervals, uuids, `bytea` and `money` are strings, `json`/`jsonb` any
//! JSON, arrays lists (whose elements may be null), enums their labels.

use super::catalog::Column;

/// A language rows are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Ts,
    /// JavaScript with JSDoc types, for componentize-js (one module: no
    /// imports or exports of its own).
    Js,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Lang, String> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" | "py" => Ok(Lang::Python),
            "ts" | "typescript" => Ok(Lang::Ts),
            "js" | "javascript" => Ok(Lang::Js),
            _ => Err(format!("`{s}`: say rust, python, ts or js")),
        }
    }
}

/// What a column's values are, language aside.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Bool,
    /// Integer of this many bits.
    Int(u8),
    Float,
    Decimal,
    /// Text, with what it holds (for the doc comment).
    Text(&'static str),
    Json,
    /// An enum: its type's name and labels.
    Enum(String, Vec<String>),
}

fn shape(c: &Column) -> Shape {
    match (c.category, c.base.as_str()) {
        (_, "bool") => Shape::Bool,
        (_, "int2") => Shape::Int(16),
        (_, "int4") => Shape::Int(32),
        (_, "int8") => Shape::Int(64),
        // PostgreSQL renders an oid as a JSON string.
        (_, "oid") => Shape::Text("oid"),
        (_, "float4" | "float8") => Shape::Float,
        (_, "numeric") => Shape::Decimal,
        (_, "json" | "jsonb") => Shape::Json,
        (_, "uuid") => Shape::Text("uuid"),
        (_, "timestamptz") => Shape::Text("timestamptz, UTC: 2024-05-06T07:08:09.123456+00:00"),
        (_, "timestamp") => Shape::Text("timestamp: 2024-05-06T07:08:09.123456"),
        (_, "date") => Shape::Text("date: 2024-05-06"),
        (_, "time" | "timetz") => Shape::Text("time: 07:08:09"),
        (_, "interval") => Shape::Text("interval: 1 day 02:00:00"),
        (_, "bytea") => Shape::Text("bytea, hex: \\\\x00ff"),
        (_, "money") => Shape::Text("money: $1,234.50"),
        ('E', name) => Shape::Enum(name.to_owned(), c.labels.clone()),
        ('S', _) => Shape::Text(""),
        // Composite, range, geometric, network types...: as JSON.
        _ => Shape::Json,
    }
}

/// `user_accounts` → `UserAccounts`.
pub(super) fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for ch in name.chars() {
        if ch.is_ascii_alphanumeric() {
            if upper {
                out.extend(ch.to_uppercase());
            } else {
                out.push(ch);
            }
            upper = false;
        } else {
            upper = true;
        }
    }
    match out.chars().next() {
        Some(c) if c.is_ascii_digit() => format!("T{out}"),
        None => "T".into(),
        _ => out,
    }
}

/// A column name as an identifier: lowercase letters, digits, `_`.
fn ident(name: &str, keywords: &[&str]) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if keywords.contains(&out.as_str()) {
        out.push('_');
    }
    out
}

/// Identifiers for `names`, made distinct: a name that sanitizes to one
/// already taken gets `_2`, `_3`, ...
fn distinct(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    names
        .map(|name| {
            let mut candidate = name.clone();
            let mut n = 1;
            while !taken.insert(candidate.clone()) {
                n += 1;
                candidate = format!("{}_{n}", name.trim_end_matches('_'));
            }
            candidate
        })
        .collect()
}

/// A string literal for Python (and JavaScript): JSON's escapes are theirs.
fn py_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string encodes")
}

/// Text for inside a doc comment: on one line, and unable to end it.
fn comment(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace("*/", "* /")
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use",
    "where", "while", "yield", "box", "gen", "try", "abstract", "become", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "_",
];
const PYTHON_KEYWORDS: &[&str] = &[
    "false", "none", "true", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "match", "case",
];

/// Row types for `schema.table` in `lang`, as a source file; `first`:
/// the first table of the file (which carries the shared helpers).
pub fn generate(schema: &str, table: &str, columns: &[Column], lang: Lang, first: bool) -> String {
    match lang {
        Lang::Rust => rust(schema, table, columns),
        Lang::Python => python(schema, table, columns),
        Lang::Ts | Lang::Js => ts(schema, table, columns, lang == Lang::Js, first),
    }
}

fn header(comment: &str, schema: &str, table: &str) -> String {
    format!(
        "{comment} Row type of {schema}.{table}, written by `pgevents-host codegen` from the live\n\
         {comment} catalog. Write it again when the table changes.\n"
    )
}

fn rust(schema: &str, table: &str, columns: &[Column]) -> String {
    let name = format!("{}Row", camel(table));
    let mut enums = String::new();
    let mut fields = String::new();
    let idents = distinct(columns.iter().map(|c| ident(&c.name, RUST_KEYWORDS)));
    for (c, field) in columns.iter().zip(idents) {
        let shape = shape(c);
        let base = match &shape {
            Shape::Bool => "bool".to_owned(),
            Shape::Int(16) => "i16".into(),
            Shape::Int(32) => "i32".into(),
            Shape::Int(_) => "i64".into(),
            Shape::Float => "f64".into(),
            Shape::Decimal => "pgevents_plugin_sdk::types::Decimal".into(),
            Shape::Text(_) => "String".into(),
            Shape::Json => "pgevents_plugin_sdk::serde_json::Value".into(),
            Shape::Enum(ty, labels) => {
                let ty_name = camel(ty);
                if !enums.contains(&format!("pub enum {ty_name} ")) {
                    enums.push_str(&format!(
                        "\n/// The enum `{ty}`.\n#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]\npub enum {ty_name} {{\n"
                    ));
                    let variants = distinct(labels.iter().map(|label| match camel(label) {
                        // `T` is what `camel` makes of a label without letters.
                        v if v == "T" || v == "Self" => format!("V{v}"),
                        v => v,
                    }));
                    for (label, variant) in labels.iter().zip(variants) {
                        enums.push_str(&format!(
                            "    #[serde(rename = {label:?})]\n    {variant},\n"
                        ));
                    }
                    enums.push_str("}\n");
                }
                ty_name
            }
        };
        let ty = if c.array {
            format!("Vec<Option<{base}>>")
        } else {
            base
        };
        let ty = if c.not_null {
            ty
        } else {
            format!("Option<{ty}>")
        };
        let mut doc = format!("    /// `{}` {}", comment(&c.name), c.type_name);
        if c.not_null {
            doc.push_str(" not null");
        }
        if c.primary_key {
            doc.push_str(", primary key");
        }
        if let Shape::Text(what) = shape
            && !what.is_empty()
        {
            doc.push_str(&format!(" ({what})"));
        }
        fields.push_str(&doc);
        fields.push('\n');
        if field != c.name {
            fields.push_str(&format!("    #[serde(rename = {:?})]\n", c.name));
        }
        if !c.not_null {
            fields.push_str("    #[serde(default)]\n");
        }
        fields.push_str(&format!("    pub {field}: {ty},\n"));
    }
    format!(
        "{}\n/// A row of `{schema}.{table}`, as events carry it (`event.new_row::<{name}>()`).\n\
         #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]\n\
         pub struct {name} {{\n{fields}}}\n{enums}",
        header("//", schema, table)
    )
}

fn python(schema: &str, table: &str, columns: &[Column]) -> String {
    let name = format!("{}Row", camel(table));
    let mut enums = String::new();
    let mut fields = String::new();
    let mut converts = String::new();
    let idents = distinct(columns.iter().map(|c| ident(&c.name, PYTHON_KEYWORDS)));
    for (c, field) in columns.iter().zip(idents) {
        let shape = shape(c);
        let base = match &shape {
            Shape::Bool => "bool".to_owned(),
            Shape::Int(_) => "int".into(),
            Shape::Float => "float".into(),
            Shape::Decimal => "Decimal".into(),
            Shape::Text(_) => "str".into(),
            Shape::Json => "Any".into(),
            Shape::Enum(ty, labels) => {
                let ty_name = camel(ty);
                if !enums.contains(&format!("class {ty_name}(")) {
                    enums.push_str(&format!(
                        "\n\nclass {ty_name}(str, Enum):\n    \"\"\"The enum `{ty}`.\"\"\"\n\n"
                    ));
                    let members = distinct(labels.iter().map(|label| {
                        let member = ident(label, PYTHON_KEYWORDS).to_uppercase();
                        // Enum reserves `_sunder_` names; a member needs a letter.
                        if member.starts_with('_')
                            || !member.contains(|c: char| c.is_ascii_alphabetic())
                        {
                            format!("LABEL{member}")
                        } else {
                            member
                        }
                    }));
                    for (label, member) in labels.iter().zip(members) {
                        enums.push_str(&format!("    {member} = {}\n", py_str(label)));
                    }
                }
                ty_name
            }
        };
        let ty = if c.array {
            format!("list[Optional[{base}]]")
        } else {
            base.clone()
        };
        let ty = if c.not_null {
            ty
        } else {
            format!("Optional[{ty}]")
        };
        let doc = comment(&format!(
            "`{}` {}{}",
            c.name,
            c.type_name,
            if c.not_null { " not null" } else { "" }
        ))
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
        fields.push_str(&format!("    {field}: {ty}\n    \"\"\"{doc}\"\"\"\n"));
        let get = format!("row.get({})", py_str(&c.name));
        let convert = match (&shape, c.array) {
            (Shape::Enum(..), false) => format!("_opt({base}, {get})"),
            (Shape::Enum(..), true) => format!("_list({base}, {get})"),
            (Shape::Decimal, false) => format!("_opt(_decimal, {get})"),
            (Shape::Decimal, true) => format!("_list(_decimal, {get})"),
            // The SDK parses fractions as Decimal; a float column is a float.
            (Shape::Float, false) => format!("_opt(float, {get})"),
            (Shape::Float, true) => format!("_list(float, {get})"),
            _ => get,
        };
        converts.push_str(&format!("            {field}={convert},\n"));
    }
    format!(
        "{}\nfrom dataclasses import dataclass\nfrom decimal import Decimal\nfrom enum import Enum\nfrom typing import Any, Optional\n\n\n\
         def _decimal(value: Any) -> Decimal:\n    # Parse rows with json.loads(text, parse_float=Decimal) to keep every digit.\n    return value if isinstance(value, Decimal) else Decimal(str(value))\n\n\n\
         def _opt(make, value):\n    return None if value is None else make(value)\n\n\n\
         def _list(make, values):\n    return None if values is None else [_opt(make, v) for v in values]\n{enums}\n\n\
         @dataclass\nclass {name}:\n    \"\"\"A row of `{schema}.{table}`, as events carry it.\"\"\"\n\n{fields}\n\
         \x20   @classmethod\n    def from_row(cls, row: dict) -> \"{name}\":\n        \"\"\"From a row dict (`json.loads(event.new_row, parse_float=Decimal)`).\"\"\"\n        return cls(\n{converts}        )\n",
        header("#", schema, table)
    )
}

fn ts(schema: &str, table: &str, columns: &[Column], js: bool, first: bool) -> String {
    let name = format!("{}Row", camel(table));
    let mut types = String::new();
    let mut fields = String::new();
    let mut decimals = Vec::new();
    for c in columns {
        let shape = shape(c);
        let base = match &shape {
            Shape::Bool => "boolean".to_owned(),
            Shape::Int(64) => "number".into(),
            Shape::Int(_) | Shape::Float => "number".into(),
            Shape::Decimal => {
                decimals.push(c.name.clone());
                "string".into()
            }
            Shape::Text(_) => "string".into(),
            Shape::Json => "unknown".into(),
            Shape::Enum(ty, labels) => {
                let ty_name = camel(ty);
                if !types.contains(&format!("export type {ty_name} ")) {
                    let union: Vec<String> = labels.iter().map(|l| py_str(l)).collect();
                    types.push_str(&format!(
                        "\n/** The enum `{ty}`. */\nexport type {ty_name} = {};\n",
                        union.join(" | ")
                    ));
                }
                ty_name
            }
        };
        let ty = if c.array {
            format!("({base} | null)[]")
        } else {
            base
        };
        let ty = if c.not_null {
            ty
        } else {
            format!("{ty} | null")
        };
        let note = match shape {
            Shape::Int(64) => " (bigint: exact up to 2^53)".to_owned(),
            Shape::Decimal => " (exact decimal text: parse rows with parseRow)".to_owned(),
            Shape::Text(what) if !what.is_empty() => format!(" ({what})"),
            _ => String::new(),
        };
        let doc = comment(&format!(
            "`{}` {}{}{note}",
            c.name,
            c.type_name,
            if c.not_null { " not null" } else { "" }
        ));
        if js {
            fields.push_str(&format!(
                " * @property {{{ty}}} {} {doc}\n",
                js_property(&c.name)
            ));
        } else {
            fields.push_str(&format!("  /** {doc} */\n  {}: {ty};\n", py_str(&c.name)));
        }
    }
    let decimals: Vec<String> = decimals.iter().map(|d| py_str(d)).collect();
    let decimals = decimals.join(", ");
    let helpers = match (first, js) {
        (false, _) => String::new(),
        (true, false) => TS_PARSE_ROW.to_owned(),
        (true, true) => js_parse_row(),
    };
    if js {
        let types = types
            .replace("export type ", "/** @typedef {")
            .lines()
            .map(|l| match l.strip_prefix("/** @typedef {") {
                // `/** @typedef {Mood = "a" | "b";` → `/** @typedef {"a" | "b"} Mood */`
                Some(rest) => {
                    let (name, union) = rest.split_once(" = ").unwrap_or((rest, ""));
                    format!("/** @typedef {{{}}} {name} */", union.trim_end_matches(';'))
                }
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        return format!(
            "{}{types}\n/**\n * A row of `{schema}.{table}`, as events carry it.\n * @typedef {{Object}} {name}\n{fields} */\n\n\
             /** Columns of type numeric, kept as their exact decimal text. */\nconst {name}Decimals = [{decimals}];\n\n\
             /**\n * Parse an event's row text (`event.newRow`) into a {name}: like JSON.parse, except\n * that the numeric columns' numbers keep every digit, as strings.\n * @param {{string}} text\n * @returns {{{name}}}\n */\n\
             function parse{name}(text) {{\n  return parseRow(text, {name}Decimals);\n}}\n\n{helpers}",
            header("//", schema, table),
        );
    }
    format!(
        "{}{types}\n/** A row of `{schema}.{table}`, as events carry it. */\nexport interface {name} {{\n{fields}}}\n\n\
         /** Columns of type numeric, kept as their exact decimal text. */\nexport const {name}Decimals: readonly string[] = [{decimals}];\n\n\
         /**\n * Parse an event's row text (`event.newRow`) into a {name}: like JSON.parse, except\n * that the numeric columns' numbers keep every digit, as strings.\n */\n\
         export function parse{name}(text: string): {name} {{\n  return parseRow(text, {name}Decimals) as unknown as {name};\n}}\n\n{helpers}",
        header("//", schema, table),
    )
}

/// A JSDoc property name: as is if an identifier, else quoted.
fn js_property(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        name.to_owned()
    } else {
        py_str(name)
    }
}

/// JSON.parse for a row, keeping the top-level `decimals` columns' numbers
/// (and the numbers in their arrays) as their source text.
const TS_PARSE_ROW: &str = r#"/** JSON.parse for a row object, with the given columns' numbers kept as text. */
export function parseRow(text: string, decimals: readonly string[]): Record<string, unknown> {
  const keep = new Set(decimals);
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const value = (raw: boolean, depth: number): unknown => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out: Record<string, unknown> = {};
      ws();
      if (text[i] === "}") { i++; return out; }
      for (;;) {
        const key = value(false, depth + 1) as string;
        ws();
        i++; // the colon
        // defineProperty: a key `__proto__` is data, not the prototype.
        Object.defineProperty(out, key, {
          value: value(depth === 0 && keep.has(key), depth + 1),
          enumerable: true, writable: true, configurable: true,
        });
        ws();
        if (i >= text.length) throw new SyntaxError("unterminated row JSON");
        if (text[i++] === "}") return out;
      }
    }
    if (c === "[") {
      i++;
      const out: unknown[] = [];
      ws();
      if (text[i] === "]") { i++; return out; }
      for (;;) {
        out.push(value(raw, depth + 1));
        ws();
        if (i >= text.length) throw new SyntaxError("unterminated row JSON");
        if (text[i++] === "]") return out;
      }
    }
    const start = i;
    if (c === '"') {
      i++;
      while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
      i++;
      return JSON.parse(text.slice(start, i));
    }
    while (i < text.length && !",}] \t\n\r".includes(text[i])) i++;
    const token = text.slice(start, i);
    return raw && token !== "null" ? token : JSON.parse(token);
  };
  return value(false, 0) as Record<string, unknown>;
}
"#;

/// [`TS_PARSE_ROW`] without its type annotations, for JavaScript.
fn js_parse_row() -> String {
    let mut js = TS_PARSE_ROW.to_owned();
    for (ts, plain) in [
        (
            "export function parseRow(text: string, decimals: readonly string[]): Record<string, unknown> {",
            "function parseRow(text, decimals) {",
        ),
        (
            "const value = (raw: boolean, depth: number): unknown => {",
            "const value = (raw, depth) => {",
        ),
        (
            "const out: Record<string, unknown> = {};",
            "const out = {};",
        ),
        (
            "value(false, depth + 1) as string;",
            "value(false, depth + 1);",
        ),
        ("const out: unknown[] = [];", "const out = [];"),
        (
            "value(false, 0) as Record<string, unknown>;",
            "value(false, 0);",
        ),
    ] {
        debug_assert!(js.contains(ts), "{ts}");
        js = js.replace(ts, plain);
    }
    js
}
