//! `dev PROJECT`: build a plugin project, put the component into a plugins
//! folder, and build and put it there again whenever a source file changes;
//! the host serving that folder (`dev` runs one) reloads it live.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

/// Folders of a project that hold what builds write or fetch, not sources.
const NOT_SOURCES: &[&str] = &["target", "node_modules", ".git", ".pgevents", "__pycache__"];

/// How long the sources must be quiet before a build starts.
const QUIET: Duration = Duration::from_millis(300);

/// How a project is built, and where the component lands.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    /// The program and its arguments, run in `dir`.
    pub build: Vec<String>,
    /// Where the build writes the component; `None`: the newest `.wasm` in `dir`.
    pub output: Option<PathBuf>,
}

impl Project {
    /// A Rust crate (`Cargo.toml`: `cargo build --release --target
    /// wasm32-wasip2`), or any project with an executable `build.sh` that
    /// writes one `.wasm` into its folder (what `new --lang python|js` writes).
    pub fn detect(dir: &Path) -> anyhow::Result<Project> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("no plugin project at {}", dir.display()))?;
        let manifest = dir.join("Cargo.toml");
        if manifest.is_file() {
            let text = std::fs::read_to_string(&manifest)?;
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("{} is not TOML", manifest.display()))?;
            let name = table
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .with_context(|| format!("{} has no [package] name", manifest.display()))?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("target"));
            let output = target
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", name.replace('-', "_")));
            let build = ["cargo", "build", "--release", "--target", "wasm32-wasip2"];
            return Ok(Project {
                dir,
                build: build.map(String::from).to_vec(),
                output: Some(output),
            });
        }
        if dir.join("build.sh").is_file() {
            return Ok(Project {
                build: vec!["sh".into(), "./build.sh".into()],
                dir,
                output: None,
            });
        }
        anyhow::bail!(
            "{} is not a plugin project: it has neither a Cargo.toml nor a build.sh \
             (`pgevents-host new` writes one)",
            dir.display()
        )
    }

    /// Runs the build; the component it wrote, or the build's output if it failed.
    pub fn build(&self) -> Result<PathBuf, String> {
        let started = SystemTime::now();
        let output = Command::new(&self.build[0])
            .args(&self.build[1..])
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", self.build.join(" ")))?;
        if !output.status.success() {
            return Err(format!(
                "`{}` failed ({}):\n{}{}",
                self.build.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let built = match &self.output {
            Some(path) => path.clone(),
            None => newest_wasm(&self.dir).ok_or_else(|| {
                format!(
                    "`{}` succeeded but wrote no .wasm into {}",
                    self.build.join(" "),
                    self.dir.display()
                )
            })?,
        };
        let fresh = std::fs::metadata(&built)
            .and_then(|m| m.modified())
            .map_err(|e| format!("{}: {e}", built.display()))?;
        // cargo leaves an unchanged component alone: older is fine for it.
        if self.output.is_none() && fresh < started {
            return Err(format!(
                "`{}` succeeded but {} is older than the build",
                self.build.join(" "),
                built.display()
            ));
        }
        Ok(built)
    }
}

fn newest_wasm(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Copies `built` into `plugins` under its own name, through a temporary
/// file and a rename: the host never reads half a file.
pub fn install(built: &Path, plugins: &Path) -> std::io::Result<PathBuf> {
    let name = built.file_name().unwrap_or_default();
    let target = plugins.join(name);
    let partial = plugins.join(format!(".{}.partial", name.to_string_lossy()));
    std::fs::copy(built, &partial)?;
    std::fs::rename(&partial, &target)?;
    Ok(target)
}

/// Builds and installs once, saying how it went.
pub fn build_and_install(project: &Project, plugins: &Path) -> bool {
    let started = Instant::now();
    tracing::info!(project = %project.dir.display(), "building: {}", project.build.join(" "));
    match project.build() {
        Ok(built) => match install(&built, plugins) {
            Ok(path) => {
                tracing::info!(
                    "built in {:.1} s; {} is in place, the host reloads it",
                    started.elapsed().as_secs_f64(),
                    path.display()
                );
                true
            }
            Err(e) => {
                tracing::error!(
                    "cannot put {} into {}: {e}",
                    built.display(),
                    plugins.display()
                );
                false
            }
        },
        Err(e) => {
            tracing::error!("the build failed; the running plugin stays as it was.\n{e}");
            false
        }
    }
}

/// Whether a change to `path` (inside the project) is a change to a source.
fn is_source(project: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(project) else {
        return false;
    };
    let first = rel.components().next();
    let in_sources =
        first.is_none_or(|c| !NOT_SOURCES.contains(&c.as_os_str().to_string_lossy().as_ref()));
    in_sources && path.extension().is_none_or(|e| e != "wasm")
}

/// Builds the project into `plugins` again after every change to its
/// sources, until `shutdown`. A failed build leaves the last good component
/// in place. Changes made while a build runs (its own output) are dropped.
pub async fn watch(
    project: Project,
    plugins: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut changes) = mpsc::unbounded_channel::<()>();
    let root = project.dir.clone();
    let mut watcher = {
        let root = root.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
                && event.paths.iter().any(|p| is_source(&root, p))
            {
                let _ = tx.send(());
            }
        })?
    };
    {
        use notify::Watcher;
        watcher.watch(&root, notify::RecursiveMode::NonRecursive)?;
        for entry in std::fs::read_dir(&root)? {
            let path = entry?.path();
            if path.is_dir() && is_source(&root, &path) {
                watcher.watch(&path, notify::RecursiveMode::Recursive)?;
            }
        }
    }
    loop {
        tracing::info!("watching {} for changes", root.display());
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            Some(()) = changes.recv() => {}
        }
        // Wait until the editor is done saving.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(QUIET) => break,
                Some(()) = changes.recv() => {}
            }
        }
        let (p, dir) = (project.clone(), plugins.clone());
        tokio::task::spawn_blocking(move || build_and_install(&p, &dir)).await?;
        while changes.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outputs_and_fetched_folders_are_not_sources() {
        let root = Path::new("/p");
        assert!(is_source(root, Path::new("/p/src/lib.rs")));
        assert!(is_source(root, Path::new("/p/app.py")));
        assert!(is_source(root, Path::new("/p/Cargo.toml")));
        for not in [
            "/p/target/x.rs",
            "/p/node_modules/a.js",
            "/p/plugin.wasm",
            "/p/.git/HEAD",
            "/elsewhere/a.rs",
        ] {
            assert!(!is_source(root, Path::new(not)), "{not}");
        }
    }
}
