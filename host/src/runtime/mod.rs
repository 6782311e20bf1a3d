//! The wasmtime engine, limits and bindings: the only module that touches
//! wasmtime types. The rest of the host sees [`Runtime`], [`LoadedPlugin`],
//! [`Manifest`] and [`Outcome`].

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
    });
}
mod http;
mod manifest;

pub use manifest::{Manifest, ManifestError, Subscription};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bindings::pgevents::plugin::types::{
    Context, Disposition, Event, Failure, Operation, Position,
};
use bindings::{
    PluginPre,
    pgevents::plugin::{config, host, sql},
};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::{
    DESCRIBE_TIMEOUT_MS, EPOCH_TICK_MS, FAILURE_MESSAGE_MAX_BYTES, LOG_LINE_MAX_BYTES,
    LOG_LINES_PER_CALL, LOG_LINES_PER_EVENT, MAX_PLUGIN_FILE_BYTES,
};
use crate::log::{LoggedEvent, Op};

/// The world this host implements, as plugins name it.
pub const WORLD: &str = "pgevents:plugin/plugin@0.1.0";

/// Plugin stdout+stderr captured per call (a panic message lands here).
const OUTPUT_CAPACITY_BYTES: usize = 1 << 20;

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
         to grant it, add to the host's config file:\n    [plugins.{plugin}]\n    {grant}"
    )]
    NotGranted {
        path: String,
        plugin: String,
        capability: &'static str,
        grant: &'static str,
    },
    #[error("{path}: the plugin says its name is `{first}`, then, given its config, `{second}`")]
    NameChanged {
        path: String,
        first: String,
        second: String,
    },
}

/// A capability the operator must grant, recognised by the interface a
/// component imports (a plugin that never calls it does not import it).
struct Capability {
    name: &'static str,
    /// Import names start with this.
    interface: &'static str,
    /// The config line that grants it.
    grant: &'static str,
    granted: fn(&Grants) -> bool,
}

const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "sql",
        interface: "pgevents:plugin/sql",
        grant: "sql = { role = \"...\" }",
        granted: |g| g.sql,
    },
    Capability {
        name: "http",
        interface: "wasi:http/outgoing-handler",
        grant: "http = { allow = [\"host:port\"] }",
        granted: |g| g.http.is_some(),
    },
];

/// A value passed to or returned from the `sql` capability.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Boolean(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Json(String),
    Bytes(Vec<u8>),
}

/// A query's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// A statement that failed, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFailure {
    pub sqlstate: String,
    pub message: String,
}

/// Where a plugin's `sql` calls go (a session as the plugin's role, inside
/// the batch transaction). Called from the plugin's thread: it may block.
pub trait SqlAccess: Send + Sync {
    fn query(&self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlFailure>;
    fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlFailure>;
}

/// A log line a plugin wrote through the `host.log` import, or its stdout.
#[derive(Debug, Clone)]
pub struct PluginLog {
    pub plugin: String,
    pub level: LogLevel,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Receives every plugin log line (the host's tracing output gets them too).
pub type LogSink = Arc<dyn Fn(PluginLog) + Send + Sync>;

/// Per-instance limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a call may run: wasm code is interrupted at this deadline, and
    /// a call still blocked in a host call just after it is abandoned.
    pub handle_timeout: Duration,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from(&crate::config::Settings::default())
    }
}

/// What the operator allows one plugin (by manifest name), and its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub limits: Limits,
    /// The plugin's `config` values.
    pub config: BTreeMap<String, String>,
    /// Whether the `sql` capability is granted.
    pub sql: bool,
    /// Outbound HTTP, to the hosts it allows.
    pub http: Option<crate::config::HttpGrant>,
}

impl From<&crate::config::Settings> for Limits {
    fn from(settings: &crate::config::Settings) -> Limits {
        Limits {
            handle_timeout: settings.handle_timeout,
            memory_bytes: settings.memory_limit_bytes,
        }
    }
}

/// The engine shared by all plugins, with an epoch ticker for CPU deadlines.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<State>>,
    sink: Option<LogSink>,
    /// Where compiled components are cached (see [`Runtime::with_compile_cache`]).
    cache: Option<PathBuf>,
    /// One per plugin call that may run at once (the pool's size, less the
    /// slots kept for loading files and for abandoned calls).
    permits: Arc<tokio::sync::Semaphore>,
    /// One per `describe` call of a file being loaded.
    loading: Arc<tokio::sync::Semaphore>,
    /// Slots that abandoned calls move to (see [`ABANDONED_RESERVE`]).
    reserve: Arc<tokio::sync::Semaphore>,
    /// Per plugin name, over all its versions: calls abandoned that have not
    /// returned yet.
    stuck: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<AtomicUsize>>>>,
    /// Files whose `describe` was abandoned and has not returned yet: not
    /// asked again meanwhile, whatever their bytes (a careless author
    /// rebuilding one file strands at most one call).
    stuck_files: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// The pool slot a plugin call holds, as the permit of the semaphore it came
/// from; given back when the call's thread ends.
#[derive(Clone)]
struct Slot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl Slot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Slot {
        Slot(Arc::new(std::sync::Mutex::new(Some(permit))))
    }

    /// The call's thread is done: give the slot back. If the call had been
    /// abandoned meanwhile, it no longer counts as stuck. Under the slot's
    /// lock, as [`Slot::abandon`], so that the two never cross.
    fn finish(&self, abandoned: &AtomicBool, stuck: &AtomicUsize) {
        let mut held = self.0.lock().expect("slot");
        held.take();
        if abandoned.load(Ordering::SeqCst) {
            stuck.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The call outlasted its time: unless its thread has just finished,
    /// mark it abandoned, count it stuck, and let its slot go back to the
    /// others while its thread lives on: it takes one of the reserve (see
    /// `ABANDONED_RESERVE`), or, when that is used up, the pool's uncounted
    /// headroom. Returns whether it was abandoned.
    fn abandon(
        &self,
        abandoned: &AtomicBool,
        stuck: &AtomicUsize,
        reserve: &Arc<tokio::sync::Semaphore>,
    ) -> bool {
        let mut held = self.0.lock().expect("slot");
        if held.is_none() {
            return false;
        }
        abandoned.store(true, Ordering::SeqCst);
        stuck.fetch_add(1, Ordering::SeqCst);
        *held = reserve.clone().try_acquire_owned().ok();
        true
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Grants {
    /// Every capability, default limits: for inspecting a file, never for running it.
    pub fn permissive() -> Grants {
        Grants {
            sql: true,
            http: Some(crate::config::HttpGrant { allow: vec![] }),
            ..Grants::default()
        }
    }
}

impl From<&crate::config::EffectivePolicy> for Grants {
    fn from(policy: &crate::config::EffectivePolicy) -> Grants {
        Grants {
            limits: Limits {
                handle_timeout: policy.handle_timeout,
                memory_bytes: policy.memory_limit_bytes,
            },
            config: policy.config.clone(),
            sql: policy.sql.is_some(),
            http: policy.http.clone(),
        }
    }
}

/// Hand memory the allocator keeps but no longer uses back to the system.
/// Compiling a component takes hundreds of MiB (Cranelift, on several
/// threads), and reading a plugin file holds its size twice; glibc keeps such
/// freed memory in its arenas for ever, so an idle host would stay that large.
/// Called after each load, off the delivery path; takes a few milliseconds.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own
    // arenas to the kernel; it is thread-safe and touches no live allocation.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Make the allocator hand large blocks (plugin files, compiler buffers) back
/// to the system as soon as they are freed. glibc raises its threshold for
/// that to the size of the largest block freed so far (up to 32 MiB), after
/// which such blocks land in a thread's arena, whose top it never trims: an
/// idle host kept an 18 MiB plugin file it had read once. Call once at start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's policy for later
    // allocations; it is called before any other thread starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Instance slots kept apart for asking newly loaded files for their manifest.
const LOADING_INSTANCES: u32 = 2;

/// Instance slots kept apart for calls that were abandoned while blocked in
/// a host call (a WASI sleep): such a call keeps its thread and instance until
/// the host call returns, but gives its slot back to the other plugins. The
/// pool holds twice this many beyond `max_instances`: the reserve, and as
/// much headroom for abandoned calls beyond it, so that the others lack no
/// instance until more than 32 calls are stuck at once (a plugin may leave
/// `MAX_STUCK_CALLS` behind, a file one `describe`).
pub const ABANDONED_RESERVE: u32 = 16;

/// The pooling allocator's size: concurrent instances, and the largest memory
/// any plugin may have.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    pub max_instances: u32,
    pub max_memory_bytes: usize,
}

impl Runtime {
    /// An engine with an instance pool of the default size.
    pub fn new(sink: Option<LogSink>) -> anyhow::Result<Runtime> {
        let settings = crate::config::Settings::default();
        Runtime::with_pool(
            sink,
            Pool {
                max_instances: settings.max_instances,
                max_memory_bytes: settings.memory_limit_bytes,
            },
        )
    }

    /// An engine whose instances come from a pool: memories and tables are
    /// reserved up front and reused, so a fresh instance per call is cheap, and
    /// at most `pool.max_instances` exist at once.
    pub fn with_pool(sink: Option<LogSink>, pool: Pool) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let mut pooling = PoolingAllocationConfig::default();
        let instances = pool.max_instances.max(1);
        let slots = instances + LOADING_INSTANCES + 2 * ABANDONED_RESERVE;
        pooling
            .total_component_instances(slots)
            // Components written in other languages hold several core
            // instances, memories and large tables.
            .total_core_instances(slots.saturating_mul(16))
            .total_memories(slots.saturating_mul(4))
            .total_tables(slots.saturating_mul(8))
            .table_elements(1 << 20)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .max_memory_size(pool.max_memory_bytes.max(1 << 20));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        // The ticker holds only a weak reference: it ends with the last engine clone.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("pgevents-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                }
            })?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            sink,
            cache: None,
            permits: Arc::new(tokio::sync::Semaphore::new(instances as usize)),
            loading: Arc::new(tokio::sync::Semaphore::new(LOADING_INSTANCES as usize)),
            reserve: Arc::new(tokio::sync::Semaphore::new(ABANDONED_RESERVE as usize)),
            stuck: Arc::default(),
            stuck_files: Arc::default(),
        })
    }

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
    fn compile(&self, bytes: &[u8], sha256: &str) -> wasmtime::Result<(Component, bool)> {
        let Some(dir) = &self.cache else {
            return Ok((Component::new(&self.engine, bytes)?, false));
        };
        let entry = dir.join(format!("{sha256}-{}.cwasm", self.compatibility()));
        if let Err(why) = private_folder(dir) {
            tracing::warn!(dir = %dir.display(), "not using the compile cache: {why}");
            return Ok((Component::new(&self.engine, bytes)?, false));
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
        let component = Component::new(&self.engine, bytes)?;
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
            self.compile(bytes, &sha256)
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
                    None,
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

/// A compiled, linked plugin: each call runs in a fresh instance.
#[derive(Clone)]
pub struct LoadedPlugin {
    runtime: Runtime,
    pre: PluginPre<State>,
    pub manifest: Manifest,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
    /// The capabilities it imports (each needs the operator's grant), with
    /// the config line that grants it.
    pub capabilities: Vec<(&'static str, &'static str)>,
    grants: Arc<Grants>,
    /// Calls abandoned while blocked in a host call that have not returned yet.
    stuck: Arc<AtomicUsize>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("manifest", &self.manifest)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// How a batch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every event was handled.
    Handled,
    /// Events before `index` were handled; the rest should be delivered again.
    Failed {
        index: usize,
        retry: Retry,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// On the host's backoff schedule.
    Backoff,
    /// After the delay the plugin asked for.
    After(Duration),
    /// Retrying will not help.
    Never,
}

/// Calls blocked in host calls that a plugin may leave behind before it is
/// called no more until one returns (each holds a thread and an instance).
const MAX_STUCK_CALLS: usize = 2;

/// Grace after the handle timeout before a call blocked in a host call is
/// abandoned (wasm code is interrupted at the timeout itself).
pub const ABANDON_GRACE: Duration = Duration::from_millis(250);

impl LoadedPlugin {
    /// The limits this plugin runs under.
    pub fn limits(&self) -> Limits {
        self.grants.limits
    }

    /// Deliver `events` (with delivery attempt numbers) to `handle` in a fresh
    /// instance, on a thread of its own. A trap, a timeout or a broken
    /// contract is a retryable failure at index 0. A call still blocked in a
    /// host call (a WASI sleep, say) `ABANDON_GRACE` after its handle timeout
    /// is abandoned: it fails, and every host call it makes later is refused,
    /// so it can have no further effect.
    ///
    /// `sql` is where the plugin's `sql` calls go; `None` if not granted.
    pub async fn handle(
        self: &Arc<Self>,
        events: Vec<(LoggedEvent, u32)>,
        sql: Option<Arc<dyn SqlAccess>>,
    ) -> Outcome {
        let stuck = self.stuck.load(Ordering::SeqCst);
        if stuck >= MAX_STUCK_CALLS {
            return Outcome::Failed {
                index: 0,
                retry: Retry::Backoff,
                message: format!(
                    "{stuck} earlier calls of this plugin are still blocked in host calls; not calling it again until one returns"
                ),
            };
        }
        // Wait for a free instance slot rather than fail for want of one.
        let Ok(permit) = self.runtime.permits.clone().acquire_owned().await else {
            return Outcome::Failed {
                index: 0,
                retry: Retry::Backoff,
                message: "the instance pool is closed".into(),
            };
        };
        let slot = Slot::new(permit);
        let held = slot.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runner = self.clone();
        let flag = abandoned.clone();
        // A thread of its own rather than the blocking pool: a call blocked in
        // a host call must not keep the process (or a runtime) from exiting.
        let spawned = std::thread::Builder::new()
            .name(format!("plugin-{}", self.manifest.name))
            .spawn(move || {
                let outcome = runner.handle_blocking(events, sql, flag.clone());
                held.finish(&flag, &runner.stuck);
                let _ = tx.send(outcome);
            });
        if let Err(e) = spawned {
            return Outcome::Failed {
                index: 0,
                retry: Retry::Backoff,
                message: format!("could not start a thread for the plugin call: {e}"),
            };
        }
        let limit = self.grants.limits.handle_timeout;
        let mut rx = rx;
        let no_answer = || Outcome::Failed {
            index: 0,
            retry: Retry::Backoff,
            message: "the plugin call's thread ended without an answer (host bug)".into(),
        };
        match tokio::time::timeout(limit + ABANDON_GRACE, &mut rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => no_answer(),
            // It finished just as its time ran out: its answer counts.
            Err(_) if !slot.abandon(&abandoned, &self.stuck, &self.runtime.reserve) => {
                rx.await.unwrap_or_else(|_| no_answer())
            }
            Err(_) => Outcome::Failed {
                index: 0,
                retry: Retry::Backoff,
                message: format!(
                    "exceeded the time limit of {limit:?} per call while blocked in a host call \
                         (a WASI sleep or poll?); the call was abandoned"
                ),
            },
        }
    }

    /// [`LoadedPlugin::handle`] on the calling thread.
    fn handle_blocking(
        &self,
        events: Vec<(LoggedEvent, u32)>,
        sql: Option<Arc<dyn SqlAccess>>,
        abandoned: Arc<AtomicBool>,
    ) -> Outcome {
        let count = events.len();
        let wit_events: Vec<Event> = events.into_iter().map(|(e, a)| to_wit(e, a)).collect();
        let name = self.manifest.name.clone();
        let timeout = self.grants.limits.handle_timeout;
        let log_lines =
            LOG_LINES_PER_CALL.saturating_add(LOG_LINES_PER_EVENT.saturating_mul(count as u32));
        let result = self.call(
            &name,
            timeout,
            sql,
            abandoned,
            log_lines,
            |plugin, store| {
                plugin
                    .pgevents_plugin_handler()
                    .call_handle(store, &wit_events)
            },
        );
        match result {
            Ok(Ok(())) => Outcome::Handled,
            Ok(Err(Failure {
                index,
                disposition,
                message,
            })) => {
                let index = index as usize;
                let message = plugin_text(message);
                if index >= count {
                    return Outcome::Failed {
                        index: 0,
                        retry: Retry::Backoff,
                        message: format!(
                            "plugin reported failure at index {index} of a {}-event batch: {message}",
                            count
                        ),
                    };
                }
                let retry = match disposition {
                    Disposition::Retry(None) => Retry::Backoff,
                    Disposition::Retry(Some(ms)) => Retry::After(Duration::from_millis(ms)),
                    Disposition::Permanent => Retry::Never,
                };
                Outcome::Failed {
                    index,
                    retry,
                    message,
                }
            }
            Err(message) => Outcome::Failed {
                index: 0,
                retry: Retry::Backoff,
                message,
            },
        }
    }

    /// Run `f` in a fresh store and instance with this plugin's limits; a trap
    /// becomes a message that says which limit, if any, was hit.
    fn call<R>(
        &self,
        plugin_name: &str,
        timeout: Duration,
        sql: Option<Arc<dyn SqlAccess>>,
        abandoned: Arc<AtomicBool>,
        log_lines: u32,
        f: impl FnOnce(&bindings::Plugin, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, String> {
        // Sockets are denied by WasiCtx's default address check; there are no
        // preopened folders and no environment.
        let output = MemoryOutputPipe::new(OUTPUT_CAPACITY_BYTES);
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .build();
        let http = http::Outgoing::new(
            plugin_name,
            self.grants.http.clone(),
            abandoned.clone(),
            timeout,
        );
        let state = State {
            wasi,
            http,
            table: ResourceTable::new(),
            plugin: plugin_name.to_owned(),
            sink: self.runtime.sink.clone(),
            memory_limit: self.grants.limits.memory_bytes,
            memory_exceeded: false,
            sql,
            grants: self.grants.clone(),
            log_lines_left: log_lines,
            log_lines_dropped: 0,
            abandoned,
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| state);
        let ticks = (timeout.as_millis() as u64).div_ceil(EPOCH_TICK_MS).max(1);
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        // A fresh instance per call keeps calls isolated from each other; the
        // debug line shows what that costs beside the call itself.
        let started = std::time::Instant::now();
        let instance = self.pre.instantiate(&mut store);
        let instantiated = started.elapsed();
        let result = instance.and_then(|plugin| f(&plugin, &mut store));
        tracing::debug!(
            plugin = %plugin_name,
            instantiate_us = instantiated.as_micros() as u64,
            call_us = (started.elapsed() - instantiated).as_micros() as u64,
            "plugin call"
        );
        let printed = String::from_utf8_lossy(&output.contents())
            .trim()
            .to_owned();
        if !printed.is_empty() {
            let state = store.data_mut();
            for line in printed.lines() {
                state.emit(
                    LogLevel::Info,
                    line.to_owned(),
                    vec![("stream".into(), "stdio".into())],
                );
            }
        }
        let dropped = store.data().log_lines_dropped;
        if dropped > 0 {
            tracing::warn!(
                plugin = plugin_name,
                "dropped {dropped} log lines of this call (a call may write {LOG_LINES_PER_CALL} lines plus {LOG_LINES_PER_EVENT} per event)"
            );
        }
        let output_full = output.contents().len() >= OUTPUT_CAPACITY_BYTES;
        result.map_err(|e| {
            let mut message = if output_full {
                // The guest's write failed and its runtime gave up: say why.
                format!(
                    "printed more than {} MiB to stdout and stderr, the limit per call (log with host.log instead)",
                    OUTPUT_CAPACITY_BYTES >> 20
                )
            } else if store.data().memory_exceeded {
                format!(
                    "exceeded the memory limit of {} MiB per instance",
                    self.grants.limits.memory_bytes >> 20
                )
            } else {
                match e.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => {
                        format!("exceeded the CPU time limit of {timeout:?} per call")
                    }
                    Some(trap) => {
                        let reason = trap.to_string();
                        format!("trapped: {}", reason.trim_start_matches("wasm trap: "))
                    }
                    None => format!("failed: {e:#}"),
                }
            };
            tracing::debug!(plugin = plugin_name, "call failed: {e:?}");
            let said = last_words(&printed);
            if !said.is_empty() {
                message.push_str(&format!(" (plugin output: {said})"));
            }
            plugin_text(message)
        })
    }
}

/// The last few meaningful lines a plugin printed (a panic message), without
/// the language runtime's boilerplate hints.
fn last_words(printed: &str) -> String {
    let lines: Vec<&str> = printed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let said = lines[lines.len().saturating_sub(3)..].join(" | ");
    // The end is what matters (a panic message comes last).
    match said.char_indices().rev().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("…{}", &said[cut..]),
        None => said,
    }
}

/// At most this many characters of a plugin's output go into a failure message.
const EXCERPT_CHARS: usize = 300;

/// A message from (or about) a plugin made fit for the log and the database:
/// NUL bytes (which PostgreSQL text cannot hold) replaced, and at most
/// `FAILURE_MESSAGE_MAX_BYTES`, cut as log lines are.
pub fn plugin_text(text: String) -> String {
    let text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    };
    if text.len() <= FAILURE_MESSAGE_MAX_BYTES {
        return text;
    }
    let mut cut = FAILURE_MESSAGE_MAX_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} more bytes cut)", &text[..cut], text.len() - cut)
}

fn to_wit(e: LoggedEvent, attempt: u32) -> Event {
    Event {
        id: e.id().to_string(),
        position: Position {
            txid: e.txid,
            seq: e.position.seq as u64,
        },
        operation: match e.op {
            Op::Insert => Operation::Insert,
            Op::Update => Operation::Update,
            Op::Delete => Operation::Delete,
            Op::Truncate => Operation::Truncate,
        },
        schema: e.schema,
        table: e.table,
        key: e.key,
        new_row: e.new_row,
        old_row: e.old_row,
        captured_at: e.captured_at,
        context: Context {
            user: e.user,
            application_name: e.application_name,
            tag: e.tag,
        },
        attempt,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
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

/// ` key=value key2="with space"` for a log line.
fn render_fields(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            if v.contains(char::is_whitespace) || v.contains('"') {
                format!(" {k}={v:?}")
            } else {
                format!(" {k}={v}")
            }
        })
        .collect()
}

/// Per-instance state: a deny-by-default WASI context and the plugin's identity.
struct State {
    wasi: WasiCtx,
    http: http::Outgoing,
    table: ResourceTable,
    plugin: String,
    sink: Option<LogSink>,
    memory_limit: usize,
    memory_exceeded: bool,
    sql: Option<Arc<dyn SqlAccess>>,
    grants: Arc<Grants>,
    /// Log lines this call may still write, and those it was refused.
    log_lines_left: u32,
    log_lines_dropped: u32,
    /// Set when the host gave up waiting for this call: host calls are refused.
    abandoned: Arc<AtomicBool>,
}

impl State {
    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Write a plugin's log line, within its rate limit; long lines are cut.
    fn emit(&mut self, level: LogLevel, mut message: String, mut fields: Vec<(String, String)>) {
        if self.abandoned() {
            return;
        }
        let plugin = self.plugin.as_str();
        let Some(left) = self.log_lines_left.checked_sub(1) else {
            self.log_lines_dropped += 1;
            return;
        };
        self.log_lines_left = left;
        truncate_utf8(&mut message, LOG_LINE_MAX_BYTES);
        fields.truncate(32);
        for (k, v) in &mut fields {
            truncate_utf8(k, 128);
            truncate_utf8(v, LOG_LINE_MAX_BYTES);
        }
        let shown = render_fields(&fields);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}{shown}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}{shown}"),
            LogLevel::Info => tracing::info!(plugin, "{message}{shown}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}{shown}"),
            LogLevel::Error => tracing::error!(plugin, "{message}{shown}"),
        }
        if let Some(sink) = &self.sink {
            sink(PluginLog {
                plugin: self.plugin.clone(),
                level,
                message,
                fields,
            });
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for State {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        self.http.view(&mut self.table)
    }
}

impl ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl bindings::pgevents::plugin::types::Host for State {}

/// Cut `text` to at most `max` bytes, at a character boundary, marking the cut.
fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

impl config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).cloned()
    }
}

impl State {
    fn sql(&self) -> Result<&Arc<dyn SqlAccess>, sql::SqlError> {
        if self.abandoned() {
            return Err(sql::SqlError {
                sqlstate: crate::db::sqlstate::ABANDONED.code().into(),
                message: "the host abandoned this call (it outlasted its time limit)".into(),
            });
        }
        if !self.grants.sql {
            return Err(sql::SqlError {
                sqlstate: crate::db::sqlstate::NOT_GRANTED.code().into(),
                message: format!(
                    "plugin `{}` has no sql capability; the operator grants it in the host's config file: \
                     [plugins.{}] sql = {{ role = \"...\" }}",
                    self.plugin, self.plugin
                ),
            });
        }
        self.sql.as_ref().ok_or_else(|| sql::SqlError {
            sqlstate: crate::db::sqlstate::NOT_GRANTED.code().into(),
            message: format!(
                "plugin `{}` has no sql capability; the operator grants it in the host's config file: \
                 [plugins.{}] sql = {{ role = \"...\" }}",
                self.plugin, self.plugin
            ),
        })
    }
}

impl sql::Host for State {
    fn query(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
    ) -> Result<sql::Rows, sql::SqlError> {
        let params: Vec<SqlValue> = params.into_iter().map(from_wit_value).collect();
        let rows = self
            .sql()?
            .query(&statement, &params)
            .map_err(to_wit_error)?;
        Ok(sql::Rows {
            columns: rows.columns,
            rows: rows
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(to_wit_value).collect())
                .collect(),
        })
    }

    fn execute(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
    ) -> Result<u64, sql::SqlError> {
        let params: Vec<SqlValue> = params.into_iter().map(from_wit_value).collect();
        self.sql()?
            .execute(&statement, &params)
            .map_err(to_wit_error)
    }
}

fn from_wit_value(v: sql::Value) -> SqlValue {
    match v {
        sql::Value::Null => SqlValue::Null,
        sql::Value::Boolean(b) => SqlValue::Boolean(b),
        sql::Value::Int(i) => SqlValue::Int(i),
        sql::Value::Float(f) => SqlValue::Float(f),
        sql::Value::Text(s) => SqlValue::Text(s),
        sql::Value::Json(s) => SqlValue::Json(s),
        sql::Value::Bytes(b) => SqlValue::Bytes(b),
    }
}

fn to_wit_value(v: SqlValue) -> sql::Value {
    match v {
        SqlValue::Null => sql::Value::Null,
        SqlValue::Boolean(b) => sql::Value::Boolean(b),
        SqlValue::Int(i) => sql::Value::Int(i),
        SqlValue::Float(f) => sql::Value::Float(f),
        SqlValue::Text(s) => sql::Value::Text(s),
        SqlValue::Json(s) => sql::Value::Json(s),
        SqlValue::Bytes(b) => sql::Value::Bytes(b),
    }
}

fn to_wit_error(e: SqlFailure) -> sql::SqlError {
    sql::SqlError {
        sqlstate: e.sqlstate,
        message: e.message,
    }
}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            host::Level::Trace => LogLevel::Trace,
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        self.emit(level, message, fields);
    }
}
