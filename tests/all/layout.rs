//! The source tree's shape: one home per moving part, no module cycles,
//! files that can be read in one sitting. (See docs/repository-layout.md.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file of the host may grow.
const MAX_LINES: usize = 650;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read host/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`deliver/batch.rs` → `deliver`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

/// Top-level modules each module refers to through `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(file);
        if from == "main" || from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        let mut uses = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name != from && modules.contains(&name) {
                uses.insert(name);
            }
        }
        // `use crate::{a, b::c}` groups.
        for (i, _) in text.match_indices("use crate::{") {
            let rest = &text[i + "use crate::{".len()..];
            let group = &rest[..rest.find("};").unwrap_or(rest.len())];
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != from && modules.contains(&name) {
                    uses.insert(name);
                }
            }
        }
        graph.entry(from).or_default().extend(uses);
    }
    graph
}

/// A cycle through `node`, if any (depth-first).
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut found = path[at..].to_vec();
        found.push(node.to_owned());
        return Some(found);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = graph();
    assert!(
        graph.len() > 10,
        "expected the host's modules, found {graph:?}"
    );
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(found) = cycle(&graph, node, &mut Vec::new(), &mut done) {
            panic!(
                "module cycle: {} (dependencies: {graph:#?})",
                found.join(" -> ")
            );
        }
    }
}

#[test]
fn the_runtime_and_the_event_model_stand_apart_from_delivery() {
    let graph = graph();
    for (module, forbidden) in [
        (
            "runtime",
            &[
                "eventlog",
                "deliver",
                "leases",
                "registry",
                "host",
                "maintenance",
            ][..],
        ),
        (
            "event",
            &["eventlog", "runtime", "deliver", "db", "schema"][..],
        ),
        (
            "eventlog",
            &["runtime", "deliver", "leases", "registry"][..],
        ),
    ] {
        let uses = graph.get(module).cloned().unwrap_or_default();
        for f in forbidden {
            assert!(
                !uses.contains(*f),
                "`{module}` must not import `{f}` (it imports {uses:?})"
            );
        }
    }
}

#[test]
fn every_source_file_reads_in_one_sitting() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f)
                .expect("read source")
                .lines()
                .count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by what they do (at most {MAX_LINES} lines each): {long:?}"
    );
}
