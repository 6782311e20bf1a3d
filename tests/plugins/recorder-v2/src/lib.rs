//! Test plugin: `recorder` with version 2.0.0, so that reload tests can swap
//! one version for another and tell which one handled each event.

const VERSION: &str = "2.0.0";

include!("../../recorder/src/plugin.rs");
