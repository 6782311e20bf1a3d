//! The engine shared by all plugins: its instance pool, the epoch ticker that
//! enforces CPU deadlines, the linker through which plugins reach WASI and
//! the capabilities, and the allocator's tuning.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::pgevents::plugin as wit;
use super::capability::config::ConfigCtx;
use super::capability::log::{LogCtx, LogSink};
use super::capability::publish::PublishCtx;
use super::capability::sql::SqlCtx;
use super::state::State;

/// Wasm code is interrupted at epoch ticks this far apart (the handle
/// timeout is counted in them).
pub const EPOCH_TICK_MS: u64 = 10;

/// The engine shared by all plugins, with an epoch ticker for CPU deadlines.
#[derive(Clone)]
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Arc<Linker<State>>,
    pub(super) sink: Option<LogSink>,
    /// Where compiled components are cached (see [`Runtime::with_compile_cache`]).
    pub(super) cache: Option<PathBuf>,
    /// One per plugin call that may run at once (the pool's size, less the
    /// slots kept for loading files and for abandoned calls).
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    /// One per `describe` call of a file being loaded.
    pub(super) loading: Arc<tokio::sync::Semaphore>,
    /// Slots that abandoned calls move to (see [`ABANDONED_RESERVE`]).
    pub(super) reserve: Arc<tokio::sync::Semaphore>,
    /// Per plugin name, over all its versions: calls abandoned that have not
    /// returned yet.
    pub(super) stuck: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<AtomicUsize>>>>,
    /// Files whose `describe` was abandoned and has not returned yet: not
    /// asked again meanwhile, whatever their bytes (a careless author
    /// rebuilding one file strands at most one call).
    pub(super) stuck_files: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
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
pub(super) const LOADING_INSTANCES: u32 = 2;

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
    /// An engine whose instances come from a pool: memories and tables are
    /// reserved up front and reused, so a fresh instance per call is cheap, and
    /// at most `pool.max_instances` exist at once.
    pub fn new(sink: Option<LogSink>, pool: Pool) -> anyhow::Result<Runtime> {
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
        // Each capability reaches its own part of a call's state.
        wit::types::add_to_linker::<_, HasSelf<State>>(&mut linker, |state: &mut State| state)?;
        wit::host::add_to_linker::<_, HasSelf<LogCtx>>(&mut linker, |state: &mut State| {
            &mut state.log
        })?;
        wit::config::add_to_linker::<_, HasSelf<ConfigCtx>>(&mut linker, |state: &mut State| {
            &mut state.config
        })?;
        wit::sql::add_to_linker::<_, HasSelf<SqlCtx>>(&mut linker, |state: &mut State| {
            &mut state.sql
        })?;
        wit::publish::add_to_linker::<_, HasSelf<PublishCtx>>(&mut linker, |state: &mut State| {
            &mut state.publish
        })?;
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
}
