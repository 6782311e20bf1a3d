//! The Rust side of `wit/plugin.wit`, generated: the host traits each
//! capability implements, and the plugin's exports.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});
