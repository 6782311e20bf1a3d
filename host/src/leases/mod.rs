//! Many hosts on one database: each partition of each plugin is delivered by
//! the host holding its lease, a row in `pgevents.leases` with an expiry kept
//! by the database's clock.
//!
//! - A host renews its leases every `LEASE_CHECK_MS` (500 ms), each time for
//!   the full time-to-live (`DEFAULT_LEASE_TTL_MS`, 15 s). A lease can be taken
//!   only once it has expired (or was handed back by a clean shutdown), so a
//!   host that died or was cut off is replaced within one TTL plus one check.
//! - A host starts a plugin call only while its lease is certain to outlast
//!   it: by its own clock, measured from *before* the last renewal was sent,
//!   at least the handle timeout plus `LEASE_MARGIN_MS` must remain (the TTL
//!   must exceed the handle timeout by more than that). So no two hosts ever
//!   run a batch of the same partition at once, even across a network cut.
//! - Every acknowledgement presents the lease's token and locks its row
//!   (`pgevents.ack`), so a host that lost its lease cannot move the cursor.
//! - Shares are fair: the live hosts that run a plugin, ordered by id, each
//!   take `partitions / hosts` of its partitions, and the remainder goes one
//!   each to the hosts after a per-plugin offset.
//!
//! Files: this one (the lease table's SQL), `coordinator.rs` (the actor
//! that holds this host's share and runs a deliverer per partition held).

mod coordinator;

pub(crate) use coordinator::{Coordinator, StartDeliverer};

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::schema::SCHEMA;

/// A partition whose deliverer gave up (see [`PartitionEnd::GaveUp`]) is
/// left alone by this host this long, so that another host may deliver it.
pub const PARTITION_REST_MS: u64 = 60_000;

/// Why a partition's deliverer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionEnd {
    /// Asked to (shutdown, or the partition moves to another host).
    Stopped,
    /// A permanent failure, with `on_failure = "halt"`.
    Halted,
    /// The lease is gone: another host may deliver the partition now.
    LeaseLost,
    /// It could not start for a long time (its sql role cannot log in): let
    /// another host try, and rest the partition here for a while.
    GaveUp,
}

/// This host's identity in `pgevents.hosts`.
pub fn new_host_id() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let nonce = Uuid::new_v4().simple().to_string();
    format!("{hostname}:{}:{}", std::process::id(), &nonce[..8])
}

/// Record that this host is alive and which plugins it runs; returns, per
/// plugin, the live hosts that run it (ids sorted).
pub async fn heartbeat(
    client: &impl GenericClient,
    host_id: &str,
    plugins: &[String],
    ttl: Duration,
) -> Result<HashMap<String, Vec<String>>, tokio_postgres::Error> {
    let hostname = host_id.split(':').next().unwrap_or_default();
    client
        .execute(
            &format!(
                "INSERT INTO {SCHEMA}.hosts (id, hostname, os_pid, plugins) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET plugins = $4, seen_at = clock_timestamp()"
            ),
            &[&host_id, &hostname, &(std::process::id() as i32), &plugins],
        )
        .await?;
    let secs = ttl.as_secs_f64();
    // Hosts not seen for ten TTLs are gone for good.
    client
        .execute(
            &format!(
                "DELETE FROM {SCHEMA}.hosts
                 WHERE seen_at < clock_timestamp() - make_interval(secs => $1::float8 * 10)"
            ),
            &[&secs],
        )
        .await?;
    let rows = client
        .query(
            &format!(
                "SELECT p, array_agg(h.id ORDER BY h.id)
                 FROM {SCHEMA}.hosts h, unnest(h.plugins) AS p
                 WHERE h.seen_at > clock_timestamp() - make_interval(secs => $1)
                 GROUP BY p"
            ),
            &[&secs],
        )
        .await?;
    let mut live: HashMap<String, Vec<String>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for plugin in plugins {
        let hosts = live.entry(plugin.clone()).or_default();
        if !hosts.iter().any(|id| id == host_id) {
            hosts.push(host_id.to_owned());
            hosts.sort();
        }
    }
    Ok(live)
}

/// Extend every lease this host holds; returns the tokens still held.
pub async fn renew(
    client: &impl GenericClient,
    host_id: &str,
    ttl: Duration,
) -> Result<HashMap<Uuid, (String, u32)>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "UPDATE {SCHEMA}.leases SET expires_at = clock_timestamp() + make_interval(secs => $2)
                 WHERE owner = $1 AND expires_at > clock_timestamp()
                 RETURNING token, plugin, part"
            ),
            &[&host_id, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get::<_, i32>(2) as u32)))
        .collect())
}

/// Take the lease of `plugin` partition `part` if it is free or expired.
/// Returns the new token.
pub async fn acquire(
    client: &impl GenericClient,
    host_id: &str,
    plugin: &str,
    part: u32,
    ttl: Duration,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    let token = Uuid::new_v4();
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO {SCHEMA}.leases AS l (plugin, part, owner, token, expires_at)
                 VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5))
                 ON CONFLICT (plugin, part) DO UPDATE
                 SET owner = excluded.owner, token = excluded.token,
                     expires_at = excluded.expires_at, acquired_at = clock_timestamp()
                 WHERE l.expires_at <= clock_timestamp()
                 RETURNING token"
            ),
            &[
                &plugin,
                &(part as i32),
                &host_id,
                &token,
                &ttl.as_secs_f64(),
            ],
        )
        .await?;
    Ok(row.map(|_| token))
}

/// Hand a lease back (after its deliverer stopped).
pub async fn release(
    client: &impl GenericClient,
    token: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!("DELETE FROM {SCHEMA}.leases WHERE token = $1"),
            &[&token],
        )
        .await?;
    Ok(())
}

/// Remove this host and every lease it still holds (clean shutdown).
pub async fn leave(
    client: &impl GenericClient,
    host_id: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!("DELETE FROM {SCHEMA}.leases WHERE owner = $1"),
            &[&host_id],
        )
        .await?;
    client
        .execute(
            &format!("DELETE FROM {SCHEMA}.hosts WHERE id = $1"),
            &[&host_id],
        )
        .await?;
    Ok(())
}

/// Whether `token` is still a live lease (after an acknowledgement was refused:
/// either the lease is gone, or a replay rewound the cursor).
pub async fn holds(
    client: &impl GenericClient,
    token: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {SCHEMA}.leases WHERE token = $1 AND expires_at > clock_timestamp())"
            ),
            &[&token],
        )
        .await?;
    Ok(row.get(0))
}

/// How many of `plugin`'s `parts` partitions host `me` should deliver, given
/// the live hosts (sorted). The shares of all live hosts add up to `parts`.
pub fn share(parts: u32, live: &[String], me: &str, plugin: &str) -> u32 {
    let hosts = live.len().max(1) as u32;
    let rank = live.iter().position(|h| h == me).unwrap_or(0) as u32;
    // A per-plugin offset, so that remainders do not all land on the first host.
    let offset = plugin
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % hosts;
    let slot = (rank + offset) % hosts;
    parts / hosts + u32::from(slot < parts % hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for hosts in 1..=5 {
            let live: Vec<String> = (0..hosts).map(|i| format!("h{i}")).collect();
            for parts in 1..=9 {
                for plugin in ["a", "ledger", "audit"] {
                    let shares: Vec<u32> = live
                        .iter()
                        .map(|h| share(parts, &live, h, plugin))
                        .collect();
                    assert_eq!(
                        shares.iter().sum::<u32>(),
                        parts,
                        "{hosts} hosts, {parts} parts"
                    );
                    let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                    assert!(hi - lo <= 1, "{shares:?}");
                }
            }
        }
    }
}
