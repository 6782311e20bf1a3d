//! The `config.get` import: a plugin reads the values the operator set in
//! its section of the host's config file, and no other plugin's.

use std::sync::Arc;

use super::Grants;
use crate::runtime::bindings::pgevents::plugin::config;

/// A call's config values: those of its plugin's grants.
pub(in crate::runtime) struct ConfigCtx {
    pub(in crate::runtime) grants: Arc<Grants>,
}

impl config::Host for ConfigCtx {
    fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).cloned()
    }
}
