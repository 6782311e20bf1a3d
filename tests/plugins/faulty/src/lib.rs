//! Test plugin: misbehaves on demand. Each event's `note` column (in the new
//! row of `public.items`) says what to do:
//!
//! | note          | behaviour                                              |
//! |---------------|--------------------------------------------------------|
//! | `trap`        | panic (a trap) on every attempt                        |
//! | `trap-once`   | panic on attempt 1, then behave normally               |
//! | `retry-once`  | `Failure::retry` on attempt 1, then behave normally    |
//! | `retry-after` | `Failure::retry_after` 200 ms on attempt 1, then normal|
//! | `permanent`   | `Failure::permanent` on every attempt                  |
//! | `fail-3`      | `Failure::retry` on attempts 1 to 3, then normal       |
//! | `loop`        | spin forever (the host must interrupt it)              |
//! | `oom`         | allocate 1 MiB chunks until memory runs out            |
//! | `slow`        | log "event", then keep busy for 800 ms                 |
//! | `sleep`       | sleep 30 s in a WASI call (the host must abandon it)   |
//! | `probe`       | try to read a file, an environment variable and open a |
//! |               | socket; log "probe" with what each attempt gave        |
//! | `chatty`      | log 100,000 lines                                      |
//! | anything else | log "event" with the event's fields                    |
//!
//! Events before the misbehaving one are logged first, so tests can check
//! which ones the host acknowledged.

use std::hint::black_box;

use pgevents_plugin_sdk::{Event, Failure, Manifest, Plugin, Subscription, export_plugin, log};
use serde::Deserialize;

const RETRY_AFTER_MS: u64 = 200;
const OOM_CHUNK_BYTES: usize = 1 << 20;
const SLOW_MS: u64 = 800;
const SLEEP_S: u64 = 30;
const CHATTY_LINES: u32 = 100_000;

/// What the sandbox let through: for each resource, `ok: ...` or `denied: ...`.
fn probe() -> Vec<(String, String)> {
    fn shown<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
        match r {
            Ok(v) => format!("ok: {v:?}"),
            Err(e) => format!("denied: {e}"),
        }
    }
    vec![
        (
            "file".to_owned(),
            shown(std::fs::read_to_string("/etc/hostname")),
        ),
        (
            "cwd_list".to_owned(),
            shown(std::fs::read_dir(".").map(|d| d.count())),
        ),
        ("env".to_owned(), shown(std::env::var("HOME"))),
        (
            "env_count".to_owned(),
            format!("{}", std::env::vars().count()),
        ),
        (
            "socket".to_owned(),
            shown(std::net::TcpStream::connect("127.0.0.1:5432").map(|_| "connected")),
        ),
    ]
}

#[derive(Deserialize)]
struct Row {
    note: Option<String>,
}

struct Faulty;

impl Plugin for Faulty {
    fn manifest() -> Manifest {
        Manifest::new("faulty", "1.0.0")
            .subscribe(Subscription::to("public", "items"))
            .batch_size(10)
    }

    fn handle(events: Vec<Event>) -> Result<(), Failure> {
        for (i, event) in events.iter().enumerate() {
            // Deletes, truncates and rows without a string `note` behave normally.
            let note = event
                .new_row::<Row>()
                .ok()
                .flatten()
                .and_then(|row| row.note)
                .unwrap_or_default();
            let first_attempt = event.attempt == 1;
            match note.as_str() {
                "trap" => panic!("event {}: note says trap", event.id),
                "trap-once" if first_attempt => {
                    panic!("event {}: note says trap-once", event.id)
                }
                "retry-once" if first_attempt => {
                    return Err(Failure::retry(
                        i,
                        format!("event {}: note says retry-once", event.id),
                    ));
                }
                "retry-after" if first_attempt => {
                    return Err(Failure::retry_after(
                        i,
                        RETRY_AFTER_MS,
                        format!("event {}: note says retry-after", event.id),
                    ));
                }
                "fail-3" if event.attempt <= 3 => {
                    return Err(Failure::retry(
                        i,
                        format!(
                            "event {}: note says fail-3 (attempt {})",
                            event.id, event.attempt
                        ),
                    ));
                }
                "permanent" => {
                    return Err(Failure::permanent(
                        i,
                        format!("event {}: note says permanent", event.id),
                    ));
                }
                "loop" => spin_forever(),
                "oom" => exhaust_memory(),
                "sleep" => std::thread::sleep(std::time::Duration::from_secs(SLEEP_S)),
                "probe" => log::info_with("probe", &probe()),
                "chatty" => {
                    for n in 0..CHATTY_LINES {
                        log::info_with("chatter", &[("n", n.to_string())]);
                    }
                }
                "slow" => {
                    log::info_with("event", &event.fields());
                    keep_busy(SLOW_MS);
                }
                _ => log::info_with("event", &event.fields()),
            }
        }
        Ok(())
    }
}

fn keep_busy(ms: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    while std::time::Instant::now() < until {
        black_box(());
    }
}

fn spin_forever() -> ! {
    // black_box keeps the optimizer from proving the loop does nothing.
    let mut turns: u64 = 0;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        // A non-zero fill writes every page, so memory is really committed;
        // black_box keeps the never-read chunks from being optimized away.
        chunks.push(black_box(vec![1u8; OOM_CHUNK_BYTES]));
        black_box(&chunks);
    }
}

export_plugin!(Faulty);
