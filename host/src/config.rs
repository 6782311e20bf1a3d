//! Tunable behaviour in one place. Every constant carries its unit in its name
//! and is overridable from the command line (see `main.rs`).

use std::time::Duration;

/// Schema the host installs its log, cursors and capture function into.
pub const SCHEMA: &str = "pgevents";

/// NOTIFY channel the capture function signals (at most once per transaction:
/// PostgreSQL merges identical notifications within a transaction).
pub const NOTIFY_CHANNEL: &str = "pgevents";

/// Events per `handle` call when a manifest asks for 0 (the host default).
pub const DEFAULT_BATCH_SIZE: u32 = 500;
/// Largest batch a manifest may ask for.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// With NOTIFY on, the log is still polled this often as a safety net.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// With NOTIFY off, an idle worker polls at an interval that doubles from this
/// floor up to the poll interval, and drops back to it as soon as it finds work.
pub const MIN_POLL_INTERVAL_MS: u64 = 5;
/// While a transaction older than the newest event holds the horizon back,
/// poll this often: its commit may not send a notification.
pub const HORIZON_WAIT_POLL_MS: u64 = 50;

/// Retry schedule for a failed batch: `RETRY_BASE_MS * 2^(attempt-1)`, capped at
/// `RETRY_MAX_MS`, with ±20% jitter: 0.5 s, 1 s, 2 s, 4 s, ... 60 s.
pub const DEFAULT_RETRY_BASE_MS: u64 = 500;
pub const DEFAULT_RETRY_MAX_MS: u64 = 60_000;

/// See `Settings::reconcile_interval`.
pub const DEFAULT_RECONCILE_INTERVAL_MS: u64 = 30_000;

/// How often a worker checks whether another process still delivers its plugin.
pub const CLAIM_RETRY_MS: u64 = 1_000;

/// Reconnect schedule after a lost or refused database connection: doubling
/// from 250 ms to 10 s.
pub const RECONNECT_BASE_MS: u64 = 250;
pub const RECONNECT_MAX_MS: u64 = 10_000;

/// CPU time a `handle` call may use before it is interrupted (epoch ticks of
/// `EPOCH_TICK_MS`), and the budget for `describe`.
pub const DEFAULT_HANDLE_TIMEOUT_MS: u64 = 10_000;
pub const DESCRIBE_TIMEOUT_MS: u64 = 2_000;
pub const EPOCH_TICK_MS: u64 = 10;

/// Linear memory a plugin instance may grow to.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 256 << 20;

/// Runtime settings for `run`, with the defaults above.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    pub notify: bool,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub handle_timeout: Duration,
    pub memory_limit_bytes: usize,
    /// `None`: retry the first connection forever.
    pub connect_timeout: Option<Duration>,
    /// How often the running host re-checks the capture triggers, so that a
    /// subscribed table that was dropped and re-created, or whose primary key
    /// changed, is captured correctly again without a restart.
    pub reconcile_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_interval: Duration::from_millis(DEFAULT_POLL_INTERVAL_MS),
            notify: true,
            retry_base: Duration::from_millis(DEFAULT_RETRY_BASE_MS),
            retry_max: Duration::from_millis(DEFAULT_RETRY_MAX_MS),
            handle_timeout: Duration::from_millis(DEFAULT_HANDLE_TIMEOUT_MS),
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            connect_timeout: None,
            reconcile_interval: Duration::from_millis(DEFAULT_RECONCILE_INTERVAL_MS),
        }
    }
}

/// Delay before retry number `attempt` (1-based) of a failed batch, before jitter.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1).min(31))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// `delay` ±20%, so that many failing plugins do not retry in lock step.
pub fn jitter(delay: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(60);
        let got: Vec<u64> = (1..=9)
            .map(|a| backoff(a, base, max).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(backoff(200, base, max), max);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000)).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
    }
}
