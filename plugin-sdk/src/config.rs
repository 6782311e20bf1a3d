//! Settings the operator gives the plugin in the host's config file:
//!
//! ```toml
//! [plugins.webhook.config]
//! url = "https://hooks.example.com/rows"
//! tables = "public.orders"
//! ```
//!
//! A plugin sees its own section only. Values are also available in
//! [`Plugin::manifest`](crate::Plugin::manifest), so the tables a plugin
//! subscribes to can come from its config.
//!
//! ```
//! use pgevents_plugin_sdk::config;
//!
//! let url = config::get("url").unwrap_or_else(|| "http://127.0.0.1:9000/".to_string());
//! assert!(!url.is_empty());
//! ```
//!
//! Outside WebAssembly (a plugin's native unit tests) there is no host: a key
//! is read from the environment variable `PGEVENTS_PLUGIN_CONFIG_<KEY>`
//! (uppercased, `-` and `.` as `_`).

/// The value the operator set for `key`, or `None`.
pub fn get(key: &str) -> Option<String> {
    lookup(key)
}

/// The value for `key`, or `default` when it is not set.
///
/// ```
/// let retries = pgevents_plugin_sdk::config::get_or("retries", "3");
/// assert_eq!(retries, "3");
/// ```
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_owned())
}

#[cfg(target_arch = "wasm32")]
fn lookup(key: &str) -> Option<String> {
    crate::bindings::pgevents::plugin::config::get(key)
}

#[cfg(not(target_arch = "wasm32"))]
fn lookup(key: &str) -> Option<String> {
    let name: String = key
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    std::env::var(format!("PGEVENTS_PLUGIN_CONFIG_{name}")).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn native_builds_read_the_environment() {
        assert_eq!(super::get("sdk-test.unset"), None);
    }
}
