//! The documentation: every relative link in `README.md` and `docs/**/*.md` resolves.
//!
//! A link is `[text](target)`, `![alt](target)` or a reference definition
//! `[label]: target`, outside fenced code blocks and inline code spans. Absolute
//! URLs (`http://`, `https://`, `mailto:`) are not checked. A relative target must
//! name a file or folder of the repository (relative to the linking file's folder),
//! and a `#fragment` must be the GitHub anchor of a heading in the target markdown
//! file (a bare `#fragment` means the linking file itself; a folder means its
//! `README.md`).
//!
//! `docs/reference/cli.md` and `docs/reference/configuration.md` are what
//! `pgevents-host reference cli|config` prints, so they say what the binary
//! accepts: a change to a flag or a setting without regenerating them fails here.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The repository root: the `all` test binary belongs to the `host` package.
fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().expect("repository root")
}

/// A link found in a markdown file: its 1-based line and its target as written.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    line: usize,
    target: String,
}

/// GitHub's anchor for a heading's text: lowercase; letters, digits, spaces, hyphens and
/// underscores kept, everything else dropped; spaces become hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of `text`, with the lines of fenced code blocks (``` or ~~~) blanked
/// out, so that line numbers stay right.
fn without_fenced_code(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let run = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        match fence {
            None => {
                let (ticks, tildes) = (run('`'), run('~'));
                if ticks >= 3 {
                    fence = Some(('`', ticks));
                    out.push(String::new());
                } else if tildes >= 3 {
                    fence = Some(('~', tildes));
                    out.push(String::new());
                } else {
                    out.push(line.to_string());
                }
            }
            Some((c, n)) => {
                let closing = run(c);
                if closing >= n && trimmed[closing..].trim().is_empty() {
                    fence = None;
                }
                out.push(String::new());
            }
        }
    }
    out
}

/// `text` (lines joined by `\n`) with every inline code span replaced by spaces.
/// A span opens with a run of backticks and closes with a run of the same length,
/// within the same paragraph; an unmatched run is literal text.
fn without_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = chars.clone();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let open = chars[i..].iter().take_while(|&&c| c == '`').count();
        // Look for a closing run of exactly `open` backticks before a blank line.
        let mut j = i + open;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '\n'
                && chars[j + 1..]
                    .iter()
                    .take_while(|&&c| c != '\n')
                    .all(|c| c.is_whitespace())
            {
                break;
            }
            if chars[j] == '`' {
                let run = chars[j..].iter().take_while(|&&c| c == '`').count();
                if run == open {
                    close = Some(j);
                    break;
                }
                j += run;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in &mut out[i..j + open] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = j + open;
            }
            None => i += open,
        }
    }
    out.into_iter().collect()
}

/// Every link in a markdown file's text.
fn links(text: &str) -> Vec<Link> {
    let prose = without_code_spans(&without_fenced_code(text).join("\n"));
    let mut found = Vec::new();
    for (n, line) in prose.lines().enumerate() {
        // Reference definitions: `[label]: target`.
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') && !trimmed.starts_with("[^") {
            let end = trimmed.find(']').unwrap_or(0);
            if let Some(def) = trimmed[end + 1..].strip_prefix(':') {
                let target = def.split_whitespace().next().unwrap_or("");
                let target = target.trim_start_matches('<').trim_end_matches('>');
                if !target.is_empty() {
                    found.push(Link {
                        line: n + 1,
                        target: target.to_string(),
                    });
                }
            }
        }
    }
    // Inline links `[text](target)`; the target may continue across a line break only
    // inside angle brackets, which these docs do not use, so scan line by line.
    for (n, line) in prose.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let (target, consumed) = link_target(after);
            if let Some(target) = target {
                found.push(Link {
                    line: n + 1,
                    target,
                });
            }
            rest = &after[consumed..];
        }
    }
    found.sort_by_key(|l| l.line);
    found
}

/// The target of an inline link from just after `](`, and how much of `s` it used.
fn link_target(s: &str) -> (Option<String>, usize) {
    let s_trim = s.trim_start();
    let lead = s.len() - s_trim.len();
    if let Some(inner) = s_trim.strip_prefix('<') {
        return match inner.find('>') {
            Some(end) => (Some(inner[..end].to_string()), lead + 1 + end + 1),
            None => (None, lead + 1),
        };
    }
    // Up to whitespace or the `)` that balances the link's `(`.
    let mut depth = 0usize;
    for (i, c) in s_trim.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return (Some(s_trim[..i].to_string()), lead + i + 1),
            ')' => depth -= 1,
            c if c.is_whitespace() => return (Some(s_trim[..i].to_string()), lead + i),
            _ => {}
        }
    }
    (None, s.len())
}

/// The anchors of a markdown file's headings, GitHub style: repeated headings get
/// `-1`, `-2`, … in order.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for line in without_fenced_code(text) {
        let trimmed = line.trim_start();
        if line.len() - trimmed.len() > 3 {
            continue;
        }
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) {
            continue;
        }
        let rest = &trimmed[hashes..];
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
            continue;
        }
        // A closing sequence of `#`s is not part of the heading.
        let mut title = rest.trim();
        let without_closing = title.trim_end_matches('#');
        if without_closing.is_empty() || without_closing.ends_with(' ') {
            title = without_closing.trim_end();
        }
        let base = slug(&heading_text(title));
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// A heading's text as rendered: links reduced to their text.
fn heading_text(title: &str) -> String {
    let mut out = String::new();
    let mut rest = title;
    while let Some(at) = rest.find("](") {
        let (_, consumed) = link_target(&rest[at + 2..]);
        out.push_str(&rest[..at]);
        rest = &rest[at + 2 + consumed..];
    }
    out.push_str(rest);
    out.replace('[', "")
}

/// `%20` and the like decoded, as a browser does before following a link.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` with `.` and `..` resolved lexically, or `None` if it climbs above its start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn is_absolute_url(target: &str) -> bool {
    let lower = target.to_ascii_lowercase();
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// README.md and every markdown file under docs/, relative to the root, sorted.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            return;
        };
        for entry in entries {
            let entry = entry.expect("read docs/");
            let rel = dir.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                walk(root, &rel, out);
            } else if rel.extension().is_some_and(|e| e == "md") {
                out.push(rel);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, Path::new("docs"), &mut files);
    files.sort();
    files.insert(0, PathBuf::from("README.md"));
    files
}

/// The path (relative to `root`) that `target`, linked from `file`, resolves to, or why
/// it does not resolve.
fn check(
    root: &Path,
    file: &Path,
    target: &str,
    cache: &mut HashMap<PathBuf, Vec<String>>,
) -> Result<PathBuf, String> {
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (target, None),
    };
    let path = percent_decode(path);
    let resolved = if path.is_empty() {
        file.to_path_buf()
    } else {
        let dir = file.parent().unwrap_or(Path::new(""));
        normalize(&dir.join(&path)).ok_or("outside the repository")?
    };
    let on_disk = root.join(&resolved);
    if !on_disk.exists() {
        return Err("no such file or folder".into());
    }
    let Some(fragment) = fragment else {
        return Ok(resolved);
    };
    let fragment = percent_decode(fragment);
    let markdown = if on_disk.is_dir() {
        resolved.join("README.md")
    } else {
        resolved.clone()
    };
    if markdown.extension().is_none_or(|e| e != "md") {
        // GitHub's line anchors on source files: `#L10`, `#L10-L20`.
        let line_anchor = |s: &str| {
            s.strip_prefix('L')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        };
        let ok = match fragment.split_once('-') {
            Some((a, b)) => line_anchor(a) && line_anchor(b),
            None => line_anchor(&fragment),
        };
        return if ok {
            Ok(resolved)
        } else {
            Err("a fragment on a file that is not markdown".into())
        };
    }
    let heads = cache
        .entry(markdown.clone())
        .or_insert_with(|| anchors(&fs::read_to_string(root.join(&markdown)).unwrap_or_default()));
    if heads.contains(&fragment) {
        Ok(resolved)
    } else {
        Err(format!(
            "no heading with anchor `#{fragment}` in {}",
            markdown.display()
        ))
    }
}

#[test]
fn every_relative_link_resolves() {
    let root = repo_root();
    let files = markdown_files(&root);
    assert!(
        files.iter().any(|f| f.starts_with("docs")),
        "docs/ has no markdown pages under {}",
        root.display()
    );
    let mut cache = HashMap::new();
    let mut broken = Vec::new();
    let mut readme_links_into_docs = false;
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for link in links(&text) {
            if is_absolute_url(&link.target) {
                continue;
            }
            checked += 1;
            match check(&root, file, &link.target, &mut cache) {
                Ok(resolved) => {
                    if file == Path::new("README.md") && resolved.starts_with("docs") {
                        readme_links_into_docs = true;
                    }
                }
                Err(why) => broken.push(format!(
                    "{}:{}: {} ({why})",
                    file.display(),
                    link.line,
                    link.target
                )),
            }
        }
    }
    assert!(readme_links_into_docs, "README.md has no link into docs/");
    // The index lists every page, so none is unreachable.
    let index = Path::new("docs/README.md");
    let listed: Vec<PathBuf> = fs::read_to_string(root.join(index))
        .map(|text| links(&text))
        .unwrap_or_default()
        .iter()
        .filter_map(|l| check(&root, index, &l.target, &mut cache).ok())
        .collect();
    for page in files
        .iter()
        .filter(|f| f.starts_with("docs") && *f != index)
    {
        if !listed.contains(page) {
            broken.push(format!(
                "{}: not linked from {}",
                page.display(),
                index.display()
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "{} problem(s) in the docs ({checked} relative links checked):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Security: who can do what"),
        "security-who-can-do-what"
    );
    assert_eq!(slug("The `sql` capability"), "the-sql-capability");
    assert_eq!(
        slug("Errors you may meet, and what happens"),
        "errors-you-may-meet-and-what-happens"
    );
    assert_eq!(
        slug("Flags of `run` (and --help)"),
        "flags-of-run-and---help"
    );
    assert_eq!(slug("snake_case names"), "snake_case-names");
    assert_eq!(
        anchors("# A\n## B\n```\n## B\n```\n## B\n### A ##\n"),
        ["a", "b", "b-1", "a-1"]
    );
}

#[test]
fn links_in_code_are_not_links() {
    let text = "See [one](a.md) and `[not](b.md)`.\n\
                ```md\n[not](c.md)\n```\n\
                ``x [not](d.md)\ny`` [two](<e f.md#g> \"title\") ![three](img/x.png)\n\
                [label]: ref.md#h\n\
                An unmatched ` tick, then [four](f.md (nested)).\n";
    let found = links(text);
    let targets: Vec<(usize, &str)> = found.iter().map(|l| (l.line, l.target.as_str())).collect();
    assert_eq!(
        targets,
        [
            (1, "a.md"),
            (6, "e f.md#g"),
            (6, "img/x.png"),
            (7, "ref.md#h"),
            (8, "f.md")
        ]
    );
}

/// `pgevents-host reference WHICH`, as the binary prints it.
fn generated_reference(which: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgevents-host"))
        .args(["reference", which])
        .output()
        .expect("run pgevents-host reference");
    assert!(
        out.status.success(),
        "pgevents-host reference {which}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_reference_docs_are_what_the_binary_accepts() {
    for (which, file) in [
        ("cli", "docs/reference/cli.md"),
        ("config", "docs/reference/configuration.md"),
    ] {
        let generated = generated_reference(which);
        let committed = fs::read_to_string(repo_root().join(file)).expect("read reference");
        if generated != committed {
            let line = generated
                .lines()
                .zip(committed.lines())
                .position(|(g, c)| g != c)
                .map_or_else(
                    || generated.lines().count().min(committed.lines().count()) + 1,
                    |i| i + 1,
                );
            panic!(
                "{file} differs from `pgevents-host reference {which}` from line {line}; \
                 regenerate it: cargo run -q -p pgevents-host -- reference {which} > {file}"
            );
        }
    }
}
