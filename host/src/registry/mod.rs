//! The set of live plugins: load every `.wasm` in the plugins folder, check
//! each manifest against the database, record the effective subscriptions and
//! reconcile the capture triggers.
//!
//! Files: `load.rs` (reading and compiling plugin files against the
//! operator's policy), `store.rs` (recording plugins, subscriptions and
//! cursors in the database), `reload.rs` (live reload of the folder).

mod load;
mod reload;
mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::observer::Rejected;
pub(crate) use load::{duplicate_name, log_loaded};
pub use load::{load_bytes, load_file, load_folder, plugin_files};
pub use reload::Reloader;
pub use store::{activate, deactivate, forget, record_load_error};

use crate::runtime::LoadedPlugin;
use crate::schema::SchemaError;

/// The plugins this host runs, by manifest name. Deliverers look their
/// plugin up here before every batch.
pub type PluginSet = Arc<BTreeMap<String, Arc<LoadedPlugin>>>;

/// What loading the folder produced.
#[derive(Debug)]
pub struct Loaded {
    /// Each with the file it came from.
    pub plugins: Vec<(PathBuf, Arc<LoadedPlugin>)>,
    pub rejected: Vec<Rejected>,
    /// Of the rejected, those that compiled but do not fit the database (a
    /// table they subscribe to is missing): the reloader tries them again,
    /// since the schema may change. Each with its file and the problem.
    pub waiting: Vec<(PathBuf, Arc<LoadedPlugin>, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the plugins folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(e: tokio_postgres::Error) -> Self {
        RegistryError::Schema(e.into())
    }
}
