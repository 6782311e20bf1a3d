//! `pgevents-host`: runs sandboxed WebAssembly plugins on every row change in
//! PostgreSQL. See `DESIGN` in the README for the moving parts; one module per part.

pub mod config;
pub mod db;
pub mod dead_letters;
pub mod demo;
pub mod dispatch;
pub mod leases;
pub mod log;
pub mod out;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod schema;
pub mod status;
