//! Plugins written in other languages: the Python, JavaScript and C greeters
//! (plugins/greeter-py, plugins/greeter-js, plugins/greeter-c, built by
//! `./dev build-plugins`) greet through `host.log`, and their permanent and
//! retryable failures reach the host as such.

use std::path::{Path, PathBuf};

use pgevents_host::config::Settings;
use pgevents_host::observer::HostEvent;
use pgevents_host::runtime::{Grants, LogLevel, Pool, Runtime};

use crate::support::*;

#[tokio::test]
async fn a_python_plugin_greets_and_fails_permanently_or_retryably() {
    greets_and_fails_like_the_rust_greeter("greeter-py").await;
}

#[tokio::test]
async fn a_javascript_plugin_greets_and_fails_permanently_or_retryably() {
    greets_and_fails_like_the_rust_greeter("greeter-js").await;
}

#[tokio::test]
async fn a_c_plugin_greets_and_fails_permanently_or_retryably() {
    greets_and_fails_like_the_rust_greeter("greeter-c").await;
}

/// An example plugin in plugins/; these are not cargo builds, so not [`plugin`].
fn example(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins")
        .join(format!("{name}.wasm"));
    let script = if name == "greeter-c" {
        "plugins/build-c.sh; needs apt-get for Debian's clang, lld, wasi-libc and \
         libclang-rt-14-dev-wasm32, which it installs if missing"
    } else {
        "plugins/build-polyglot.sh; needs python3 and npm"
    };
    assert!(
        path.is_file(),
        "{} is missing: build it with `./dev build-plugins` (which runs {script})",
        path.display()
    );
    path
}

/// These components take 6-8 s each to compile: keep the compiled code across
/// test runs (the cache is keyed by the file's hash, so a rebuilt file compiles again).
fn compile_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot-compile-cache");
    std::fs::create_dir_all(&dir).expect("compile cache folder");
    dir
}

/// Compile `path` into the host's compile cache as a host with `settings`
/// would, with no time limit: beside other tests on 2 cores a cold compile can
/// take longer than [`Host::start_with`] waits for a plugin to start.
async fn precompile(path: PathBuf, settings: &Settings) {
    let pool = Pool {
        max_instances: settings.max_instances,
        max_memory_bytes: settings.largest_memory_limit(),
    };
    let cache = settings.compile_cache.clone().expect("a compile cache");
    tokio::task::spawn_blocking(move || {
        let runtime = Runtime::new(None, pool)
            .expect("engine")
            .with_compile_cache(cache);
        if let Err(e) = runtime.load(&path, &|_| Grants::default()) {
            panic!("{} does not load: {e}", path.display());
        }
    })
    .await
    .unwrap();
}

/// The `user_id` field of each "Welcome, NAME!" line `plugin` logged, by name.
fn welcomes(host: &Host, plugin: &str) -> Vec<(String, String)> {
    host.history
        .iter()
        .filter_map(|e| match e {
            HostEvent::PluginLog(log) if log.plugin == plugin => {
                let name = log.message.strip_prefix("Welcome, ")?.strip_suffix('!')?;
                assert_eq!(log.level, LogLevel::Info, "{log:?}");
                let user_id = log.fields.iter().find(|(k, _)| k == "user_id");
                let (_, user_id) = user_id.unwrap_or_else(|| panic!("no user_id in {log:?}"));
                Some((name.to_owned(), user_id.clone()))
            }
            _ => None,
        })
        .collect()
}

async fn greets_and_fails_like_the_rust_greeter(plugin: &str) {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public.user_accounts (id bigserial PRIMARY KEY, name text, email text)",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example(plugin), dir.path().join(format!("{plugin}.wasm"))).unwrap();
    let settings = Settings {
        compile_cache: Some(compile_cache()),
        ..settings_with(&format!("[plugins.{plugin}]\nmax_attempts = 3\n"))
    };
    precompile(example(plugin), &settings).await;
    let mut host = Host::start_with(&db, dir, settings).await;
    assert_eq!(
        host.rejections(),
        Vec::<String>::new(),
        "{plugin} was not loaded"
    );
    assert!(
        host.history.iter().any(|e| matches!(e,
            HostEvent::PluginStarted { plugin: p, from_cache: true, .. } if p == plugin)),
        "{plugin} did not start from the compile cache: {:#?}",
        host.history
    );

    // One statement, one batch: the row without a name is at index 1.
    let ids: Vec<i64> = c
        .query(
            "INSERT INTO user_accounts (name, email)
             VALUES ('Ada Lovelace', 'ada@example.com'), (NULL, NULL), ('Grace Hopper', NULL)
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    host.wait_until(
        "the nameless row is dead-lettered",
        |e| matches!(e, HostEvent::DeadLettered { plugin: p, .. } if p == plugin),
    )
    .await;
    host.wait_until("Grace Hopper is greeted", |e| {
        matches!(e, HostEvent::PluginLog(log) if log.plugin == plugin && log.message == "Welcome, Grace Hopper!")
    })
    .await;
    // Permanent: dead-lettered after one attempt, at the index the plugin named.
    let failed: Vec<(usize, &str)> = host
        .history
        .iter()
        .filter_map(|e| match e {
            HostEvent::BatchFailed {
                plugin: p,
                index,
                message,
                ..
            } if p == plugin => Some((*index, message.as_str())),
            _ => None,
        })
        .collect();
    assert!(
        matches!(failed[..], [(1, message)] if message.contains("is not a user account")),
        "{failed:#?}"
    );
    assert!(
        host.history.iter().any(|e| matches!(e,
            HostEvent::DeadLettered { plugin: p, attempts: 1, .. } if p == plugin)),
        "{:#?}",
        host.history
    );
    assert_eq!(
        welcomes(&host, plugin),
        [
            ("Ada Lovelace".to_owned(), ids[0].to_string()),
            ("Grace Hopper".to_owned(), ids[2].to_string()),
        ],
        "each user is greeted once, with its id"
    );

    // Retryable: delivered again (the plugin sees `attempt` grow) until
    // max_attempts, then dead-lettered; the plugin goes on.
    c.batch_execute("INSERT INTO user_accounts (name) VALUES ('retry-me')")
        .await
        .unwrap();
    host.wait_until(
        "retry-me is dead-lettered after 3 attempts",
        |e| matches!(e, HostEvent::DeadLettered { plugin: p, attempts: 3, .. } if p == plugin),
    )
    .await;
    let retried: Vec<String> = host
        .failures(plugin)
        .into_iter()
        .filter(|m| m.contains("asked to be retried"))
        .collect();
    assert_eq!(retried.len(), 3, "{retried:#?}");
    for (i, message) in retried.iter().enumerate() {
        assert!(
            message.contains(&format!("(attempt {})", i + 1)),
            "{message}"
        );
    }
    c.batch_execute("INSERT INTO user_accounts (name) VALUES ('Alan Turing')")
        .await
        .unwrap();
    host.wait_until("Alan Turing is greeted", |e| {
        matches!(e, HostEvent::PluginLog(log) if log.plugin == plugin && log.message == "Welcome, Alan Turing!")
    })
    .await;
    host.stop().await;
}
