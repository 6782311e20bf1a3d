//! The store state of one plugin call: a deny-by-default WASI context, the
//! memory limit, and each capability's own part, which only that
//! capability's host functions reach (see `engine.rs`).

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings;
use super::capability::config::ConfigCtx;
use super::capability::http::Outgoing;
use super::capability::log::LogCtx;
use super::capability::publish::PublishCtx;
use super::capability::sql::SqlCtx;

/// Per-instance state: a deny-by-default WASI context and the capabilities' state.
pub(super) struct State {
    pub(super) wasi: WasiCtx,
    pub(super) http: Outgoing,
    pub(super) table: ResourceTable,
    pub(super) log: LogCtx,
    pub(super) config: ConfigCtx,
    pub(super) sql: SqlCtx,
    pub(super) publish: PublishCtx,
    pub(super) memory_limit: usize,
    pub(super) memory_exceeded: bool,
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
