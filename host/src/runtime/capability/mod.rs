//! What a plugin may import, one module per capability: `log` and `config`
//! for every plugin; `sql`, `http` and `publish` only for a plugin the operator grants
//! them to. Each module implements its WIT interface on its own part of a
//! call's state. [`CAPABILITIES`] says which imports need a grant, and
//! [`Grants`] is what the operator allows one plugin.

pub(super) mod config;
pub(super) mod http;
pub(super) mod log;
pub(super) mod publish;
pub(super) mod sql;

use std::collections::BTreeMap;

use self::http::HttpGrant;
use super::Limits;

/// A capability the operator must grant, recognised by the interface a
/// component imports (a plugin that never calls it does not import it).
pub(super) struct Capability {
    pub(super) name: &'static str,
    /// Import names start with this.
    pub(super) interface: &'static str,
    /// The config line that grants it.
    pub(super) grant: &'static str,
    pub(super) granted: fn(&Grants) -> bool,
}

pub(super) const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "sql",
        interface: "pgevents:plugin/sql",
        grant: "sql = { role = \"...\" }",
        granted: |g| g.sql,
    },
    Capability {
        name: "http",
        interface: "wasi:http/outgoing-handler",
        grant: "http = { allow = [\"host:port\"] }",
        granted: |g| g.http.is_some(),
    },
    Capability {
        name: "publish",
        interface: "pgevents:plugin/publish",
        grant: "publish = [\"SINK\"] (and the sink under [sinks.SINK])",
        granted: |g| g.publish.is_some(),
    },
];

/// What the operator allows one plugin (by manifest name), and its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub limits: Limits,
    /// The plugin's `config` values.
    pub config: BTreeMap<String, String>,
    /// Whether the `sql` capability is granted.
    pub sql: bool,
    /// Outbound HTTP, to the hosts it allows.
    pub http: Option<HttpGrant>,
    /// The sinks it may publish to.
    pub publish: Option<Vec<String>>,
}

impl Grants {
    /// Every capability, default limits: for inspecting a file, never for running it.
    pub fn permissive() -> Grants {
        Grants {
            sql: true,
            http: Some(HttpGrant { allow: vec![] }),
            publish: Some(vec![]),
            ..Grants::default()
        }
    }
}
