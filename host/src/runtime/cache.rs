//! The compile cache: compiled components on disk, so that a restart, or a
//! reload of known bytes, does not compile again. Its entries run as native
//! code, so they are read only from a folder, and as files, that belong to
//! this user and that nobody else may write.

use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use super::engine::Runtime;

impl Runtime {
    /// Cache compiled components in `dir`, keyed by the SHA-256 of the file's
    /// bytes and of this engine's compatibility hash (wasmtime version and
    /// settings), so that a restart, or a reload of known bytes, does not
    /// compile again. Entries are written to a temporary file and renamed, so
    /// a reader never sees half an entry.
    pub fn with_compile_cache(mut self, dir: PathBuf) -> Runtime {
        self.cache = Some(dir);
        self
    }

    /// The compiled component for `bytes` (whose SHA-256 is `sha256`), from
    /// the cache if there; returns whether it was.
    pub(super) fn compile(
        &self,
        path: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, bool)> {
        let Some(dir) = &self.cache else {
            return Ok((compile_now(&self.engine, path, bytes)?, false));
        };
        let entry = dir.join(format!("{sha256}-{}.cwasm", self.compatibility()));
        if let Err(why) = private_folder(dir) {
            tracing::warn!(dir = %dir.display(), "not using the compile cache: {why}");
            return Ok((compile_now(&self.engine, path, bytes)?, false));
        }
        if entry.is_file() && private_file(&entry) {
            // SAFETY: `deserialize_file` trusts the file to be wasmtime output
            // for this engine (it runs as native code). The name holds the
            // hash of the bytes and of this engine's compatibility settings;
            // the folder and the entry belong to this user and nobody else may
            // write them (checked above), and only `compile` below writes such
            // names there, atomically.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, &entry) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => tracing::warn!(
                    entry = %entry.display(),
                    "unusable compile cache entry, compiling again: {e:#}"
                ),
            }
        }
        let component = compile_now(&self.engine, path, bytes)?;
        let written = (|| {
            let serialized = component.serialize().map_err(std::io::Error::other)?;
            let mut temp = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut temp, &serialized)?;
            temp.persist(&entry).map_err(|e| e.error)?;
            Ok::<(), std::io::Error>(())
        })();
        if let Err(e) = written {
            tracing::warn!(dir = %dir.display(), "could not write the compile cache: {e}");
        }
        Ok((component, false))
    }

    /// Hex SHA-256 of the engine's compatibility hash.
    fn compatibility(&self) -> String {
        use std::hash::Hash;
        let mut hasher = Sha256Hasher(sha2::Sha256::default());
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        use sha2::Digest;
        hex(&hasher.0.finalize()[..16])
    }
}

/// Compile `bytes` (read from `path`), saying so: a large component (a
/// Python or JavaScript one is 12-40 MB) takes seconds.
fn compile_now(engine: &wasmtime::Engine, path: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
    let mb = bytes.len() as f64 / (1024.0 * 1024.0);
    tracing::info!("compiling {path} ({mb:.1} MB); the compile cache makes the next load fast");
    let started = std::time::Instant::now();
    let component = Component::new(engine, bytes)?;
    tracing::info!(
        "compiled {path} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(component)
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Make sure `dir` exists, belongs to this process's user and is writable by
/// nobody else (entries in it are run as native code).
fn private_folder(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if me.is_some_and(|uid| uid != meta.uid()) {
        return Err("it belongs to another user".into());
    }
    if meta.mode() & 0o022 != 0 {
        return Err("others may write to it (make it `chmod 700`)".into());
    }
    Ok(())
}

/// An entry written by this user, which nobody else may write.
fn private_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    std::fs::metadata(path)
        .is_ok_and(|m| me.is_none_or(|uid| uid == m.uid()) && m.mode() & 0o022 == 0)
}

/// Feeds a `Hash` into SHA-256 (stable across Rust versions, unlike `DefaultHasher`).
struct Sha256Hasher(sha2::Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
}
