//! Test plugin: logs every event it receives, so tests can read back exactly
//! what the host delivered.

const VERSION: &str = "1.0.0";

include!("plugin.rs");
