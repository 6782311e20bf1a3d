//! Calling a plugin: each call of a [`LoadedPlugin`] runs in a fresh instance,
//! on a thread of its own, holding one slot of the instance pool. A call
//! still blocked in a host call after its time is abandoned: it gives its
//! slot back, and every host call it makes later is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::bindings::pgevents::plugin::types::{
    Context, Disposition, Event, Failure, Operation, Position,
};
use super::bindings::{self, PluginPre};
use super::capability::Grants;
use super::capability::config::ConfigCtx;
use super::capability::http;
use super::capability::log::{LOG_LINES_PER_CALL, LOG_LINES_PER_EVENT};
use super::capability::log::{LogCtx, LogLevel};
use super::capability::publish::{Outbox, PublishCtx};
use super::capability::sql::{SqlAccess, SqlCtx};
use super::engine::EPOCH_TICK_MS;
use super::engine::Runtime;
use super::manifest::Manifest;
use super::state::State;
use super::{Limits, Outcome, Retry};
use crate::event::{LoggedEvent, Op};

/// A failure message (a plugin's own, or a trap's with the plugin's last
/// output) is cut to this many bytes, in the log and in the database.
pub const FAILURE_MESSAGE_MAX_BYTES: usize = 4096;

/// What a call may do beyond returning: the sql session its statements run
/// on, and where the messages it publishes are collected.
#[derive(Clone, Default)]
pub struct Effects {
    pub sql: Option<Arc<dyn SqlAccess>>,
    pub outbox: Option<Arc<Outbox>>,
    /// Answers HTTP requests instead of the network (`test`); `None`: sent.
    pub http: Option<Arc<dyn http::HttpResponder>>,
}

impl std::fmt::Debug for Effects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Effects")
            .field("sql", &self.sql.is_some())
            .field("outbox", &self.outbox)
            .field("http", &self.http.is_some())
            .finish()
    }
}

/// Plugin stdout+stderr captured per call (a panic message lands here).
const OUTPUT_CAPACITY_BYTES: usize = 1 << 20;

/// The pool slot a plugin call holds, as the permit of the semaphore it came
/// from; given back when the call's thread ends.
#[derive(Clone)]
pub(super) struct Slot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl Slot {
    pub(super) fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Slot {
        Slot(Arc::new(std::sync::Mutex::new(Some(permit))))
    }

    /// The call's thread is done: give the slot back. If the call had been
    /// abandoned meanwhile, it no longer counts as stuck. Under the slot's
    /// lock, as [`Slot::abandon`], so that the two never cross.
    pub(super) fn finish(&self, abandoned: &AtomicBool, stuck: &AtomicUsize) {
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
    pub(super) fn abandon(
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

/// A compiled, linked plugin: each call runs in a fresh instance.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub(super) runtime: Runtime,
    pub(super) pre: PluginPre<State>,
    pub manifest: Manifest,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
    /// The capabilities it imports (each needs the operator's grant), with
    /// the config line that grants it.
    pub capabilities: Vec<(&'static str, &'static str)>,
    pub(super) grants: Arc<Grants>,
    /// Calls abandoned while blocked in a host call that have not returned yet.
    pub(super) stuck: Arc<AtomicUsize>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("manifest", &self.manifest)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
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
        effects: Effects,
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
                let outcome = runner.handle_blocking(events, effects, flag.clone());
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
        effects: Effects,
        abandoned: Arc<AtomicBool>,
    ) -> Outcome {
        let count = events.len();
        let ids = events.iter().map(|(e, _)| e.id()).collect();
        let wit_events: Vec<Event> = events.into_iter().map(|(e, a)| to_wit(e, a)).collect();
        let name = self.manifest.name.clone();
        let timeout = self.grants.limits.handle_timeout;
        let log_lines =
            LOG_LINES_PER_CALL.saturating_add(LOG_LINES_PER_EVENT.saturating_mul(count as u32));
        let result = self.call(
            &name,
            timeout,
            (effects, ids),
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
    pub(super) fn call<R>(
        &self,
        plugin_name: &str,
        timeout: Duration,
        (effects, events): (Effects, Vec<uuid::Uuid>),
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
            effects.http,
        );
        let state = State {
            wasi,
            http,
            table: ResourceTable::new(),
            log: LogCtx {
                plugin: plugin_name.to_owned(),
                sink: self.runtime.sink.clone(),
                lines_left: log_lines,
                lines_dropped: 0,
                abandoned: abandoned.clone(),
            },
            config: ConfigCtx {
                grants: self.grants.clone(),
            },
            sql: SqlCtx {
                plugin: plugin_name.to_owned(),
                session: effects.sql,
                granted: self.grants.sql,
                abandoned: abandoned.clone(),
            },
            publish: PublishCtx {
                plugin: plugin_name.to_owned(),
                granted: self.grants.publish.clone(),
                events,
                counts: Default::default(),
                bytes: 0,
                outbox: effects.outbox,
                abandoned,
            },
            memory_limit: self.grants.limits.memory_bytes,
            memory_exceeded: false,
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
            let log = &mut store.data_mut().log;
            for line in printed.lines() {
                log.emit(
                    LogLevel::Info,
                    line.to_owned(),
                    vec![("stream".into(), "stdio".into())],
                );
            }
        }
        let dropped = store.data().log.lines_dropped;
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
