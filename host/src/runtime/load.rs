//! From a file to a [`LoadedPlugin`]: read the file without blocking on it,
//! compile and link it, ask it for its manifest within a time limit, and
//! refuse it if it imports a capability the operator has not granted it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use super::WORLD;
use super::bindings;
use super::bindings::PluginPre;
use super::cache::sha256_hex;
use super::call::{ABANDON_GRACE, LoadedPlugin, Slot};
use super::capability::log::LOG_LINES_PER_CALL;
use super::capability::{CAPABILITIES, Grants};
use super::engine::{LOADING_INSTANCES, Runtime};
use super::manifest::{Manifest, ManifestError};

/// The budget of a plugin's `describe` call.
pub const DESCRIBE_TIMEOUT_MS: u64 = 2_000;

/// Largest plugin file the host reads (the Python and JavaScript examples,
/// which carry a language runtime, are 12 to 18 MiB).
pub const MAX_PLUGIN_FILE_BYTES: u64 = 256 << 20;

/// Why a file could not become a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // The cause is in the message, so it is not also a `source`.
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is not a regular file ({kind}); a plugin is a `.wasm` file")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path} is larger than {} MiB, too large for a plugin", MAX_PLUGIN_FILE_BYTES >> 20)]
    TooLarge { path: String },
    #[error("{path} is not a WebAssembly file (it does not start with the `\\0asm` header)")]
    NotWasm { path: String },
    #[error(
        "{path} is a core WebAssembly module, not a component; build plugins with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: String },
    #[error("{path} is not a valid WebAssembly component: {message}")]
    Compile { path: String, message: String },
    #[error("{path} does not implement the `{WORLD}` world: {message}")]
    WrongWorld { path: String, message: String },
    #[error("{path}: `describe` failed: {message}")]
    Describe { path: String, message: String },
    #[error("{path}: {error}")]
    Manifest { path: String, error: ManifestError },
    #[error(
        "{path}: plugin `{plugin}` imports the `{capability}` capability, which the operator has not granted it; \
         to grant it, add to the host's config file:\n    [plugins.{plugin}]\n    {grant}{hint}"
    )]
    NotGranted {
        path: String,
        plugin: String,
        capability: &'static str,
        grant: &'static str,
        /// What else may be wrong (a toolchain that adds the import).
        hint: &'static str,
    },
    #[error("{path}: the plugin says its name is `{first}`, then, given its config, `{second}`")]
    NameChanged {
        path: String,
        first: String,
        second: String,
    },
}

impl Runtime {
    /// Read, compile and link `path`, then ask it for its manifest. `grants`
    /// says what the operator allows a plugin of a given name.
    pub fn load(
        &self,
        path: &Path,
        grants: &dyn Fn(&str) -> Grants,
    ) -> Result<LoadedPlugin, LoadError> {
        let shown = path.display().to_string();
        let bytes = read_plugin_file(path)?;
        self.load_bytes(&shown, &bytes, grants)
    }

    /// Compile and link component `bytes` (named `path` in messages), learn
    /// its name, and refuse it if it imports a capability not granted.
    pub fn load_bytes(
        &self,
        path: &str,
        bytes: &[u8],
        grants: &dyn Fn(&str) -> Grants,
    ) -> Result<LoadedPlugin, LoadError> {
        if PANIC_WHEN_LOADING
            .lock()
            .expect("panic markers")
            .iter()
            .any(|marker| path.contains(marker.as_str()))
        {
            panic!("a panic injected into loading {path}");
        }
        let path = path.to_owned();
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError::CoreModule { path });
            }
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm { path }),
        }
        let sha256 = sha256_hex(bytes);
        let (component, from_cache) =
            self.compile(&path, bytes, &sha256)
                .map_err(|e| LoadError::Compile {
                    path: path.clone(),
                    message: format!("{e:#}"),
                })?;
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = PluginPre::new(instance_pre).map_err(wrong_world)?;
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let mut plugin = LoadedPlugin {
            runtime: self.clone(),
            pre,
            manifest: Manifest::placeholder(),
            sha256,
            from_cache,
            capabilities: CAPABILITIES
                .iter()
                .filter(|c| imports.iter().any(|i| i.starts_with(c.interface)))
                .map(|c| (c.name, c.grant))
                .collect(),
            grants: Arc::new(Grants::default()),
            stuck: Arc::new(AtomicUsize::new(0)),
        };
        let describe = |plugin: &LoadedPlugin| {
            self.describe(&path, plugin)
                .map_err(|message| LoadError::Describe {
                    path: path.clone(),
                    message,
                })
        };
        // First without config, to learn the name; then, if the operator
        // gave that name config values, again with them.
        let mut wit_manifest = describe(&plugin)?;
        let name = wit_manifest.name.clone();
        let granted = grants(&name);
        if !granted.config.is_empty() {
            plugin.grants = Arc::new(granted.clone());
            wit_manifest = describe(&plugin)?;
            if wit_manifest.name != name {
                return Err(LoadError::NameChanged {
                    path,
                    first: name,
                    second: wit_manifest.name.chars().take(80).collect(),
                });
            }
        }
        plugin.manifest =
            Manifest::from_wit(wit_manifest).map_err(|error| LoadError::Manifest {
                path: path.clone(),
                error,
            })?;
        for capability in CAPABILITIES {
            let imported = imports.iter().any(|i| i.starts_with(capability.interface));
            if imported && !(capability.granted)(&granted) {
                return Err(LoadError::NotGranted {
                    path,
                    plugin: name,
                    capability: capability.name,
                    grant: capability.grant,
                    hint: if capability.name == "http" {
                        "\nIf the plugin makes no HTTP requests, its toolchain added the import: \
                         componentize-js does unless given `-d http fetch-event` \
                         (see docs/plugins/javascript.md); build it so instead."
                    } else {
                        ""
                    },
                });
            }
        }
        plugin.grants = Arc::new(granted);
        // Abandoned calls count per plugin name, over all its versions.
        plugin.stuck = self
            .stuck
            .lock()
            .expect("stuck calls")
            .entry(plugin.manifest.name.clone())
            .or_default()
            .clone();
        Ok(plugin)
    }
}

/// The bytes of the plugin file `path`: a regular file (not a FIFO, which
/// would block the reader, nor a device like `/dev/zero`, which never ends) of
/// at most `MAX_PLUGIN_FILE_BYTES`. Opened without blocking, then checked.
pub fn read_plugin_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let shown = || path.display().to_string();
    let read_error = |error| LoadError::Read {
        path: shown(),
        error,
    };
    // Looked at before it is opened (opening a device can itself do
    // something), and again after (it may have been swapped meanwhile).
    let kind_of = |meta: &std::fs::Metadata| {
        let kind = meta.file_type();
        if kind.is_file() {
            None
        } else if kind.is_fifo() {
            Some("a named pipe")
        } else if kind.is_char_device() || kind.is_block_device() {
            Some("a device")
        } else if kind.is_dir() {
            Some("a folder")
        } else {
            Some("not a plain file")
        }
    };
    if let Some(kind) = kind_of(&std::fs::metadata(path).map_err(read_error)?) {
        return Err(LoadError::NotAFile {
            path: shown(),
            kind,
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if let Some(kind) = kind_of(&meta) {
        return Err(LoadError::NotAFile {
            path: shown(),
            kind,
        });
    }
    if meta.len() > MAX_PLUGIN_FILE_BYTES {
        return Err(LoadError::TooLarge { path: shown() });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows while it is read.
    file.take(MAX_PLUGIN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PLUGIN_FILE_BYTES {
        return Err(LoadError::TooLarge { path: shown() });
    }
    Ok(bytes)
}

impl Runtime {
    /// Ask `plugin` for its manifest, on a thread of its own, within
    /// `DESCRIBE_TIMEOUT_MS`: WebAssembly code is interrupted then, and a
    /// call still blocked in a host call (a WASI sleep) `ABANDON_GRACE` later
    /// is abandoned like a `handle` call, so no file can stall loading, a
    /// reload, `inspect` or a shutdown.
    fn describe(
        &self,
        path: &str,
        plugin: &LoadedPlugin,
    ) -> Result<bindings::exports::pgevents::plugin::handler::Manifest, String> {
        if self.stuck_files.lock().expect("stuck files").contains(path) {
            return Err(
                "its last `describe` call is still blocked in a host call; it is not asked again until that returns"
                    .into(),
            );
        }
        let timeout = Duration::from_millis(DESCRIBE_TIMEOUT_MS);
        // Wait a while for a loading slot (others may be loading files).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let permit = loop {
            match self.loading.clone().try_acquire_owned() {
                Ok(permit) => break permit,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => {
                    return Err(format!(
                        "no instance was free to ask it for its manifest ({LOADING_INSTANCES} other files were being asked, or are stuck)"
                    ));
                }
            }
        };
        let slot = Slot::new(permit);
        let held = slot.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = abandoned.clone();
        let runner = plugin.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let stuck_files = self.stuck_files.clone();
        let file = path.to_owned();
        let describes = Arc::new(AtomicUsize::new(0));
        let counted = describes.clone();
        std::thread::Builder::new()
            .name("plugin-describe".into())
            .spawn(move || {
                let result = runner.call(
                    "(loading)",
                    timeout,
                    Default::default(),
                    flag.clone(),
                    LOG_LINES_PER_CALL,
                    |plugin, store| plugin.pgevents_plugin_handler().call_describe(store),
                );
                held.finish(&flag, &counted);
                stuck_files.lock().expect("stuck files").remove(&file);
                let _ = tx.send(result);
            })
            .map_err(|e| format!("could not start a thread to ask it for its manifest: {e}"))?;
        match rx.recv_timeout(timeout + ABANDON_GRACE) {
            Ok(result) => result,
            Err(_) => {
                // The thread removes the file when it ends, under this lock:
                // taken first, so the file is never left in after that.
                let mut stuck = self.stuck_files.lock().expect("stuck files");
                if !slot.abandon(&abandoned, &describes, &self.reserve) {
                    drop(stuck);
                    return rx.recv().unwrap_or_else(|_| {
                        Err("the describe call's thread ended without an answer".into())
                    });
                }
                stuck.insert(path.to_owned());
                Err(format!(
                    "did not answer within the time limit of {timeout:?} while blocked in a host call \
                     (a WASI sleep or poll?); the call was abandoned"
                ))
            }
        }
    }
}

/// Files whose loading panics, for tests of what a compiler bug does.
static PANIC_WHEN_LOADING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// For tests only: from now on, loading a file whose path contains `marker`
/// panics, as a bug in the compiler would.
#[doc(hidden)]
pub fn panic_when_loading(marker: &str) {
    PANIC_WHEN_LOADING
        .lock()
        .expect("panic markers")
        .push(marker.to_owned());
}
