//! Many hosts on one database: each partition of each plugin is delivered by
//! the host holding its lease, a row in `pgevents.leases` with an expiry.
//!
//! - A host renews its leases every `LEASE_CHECK_MS` (500 ms), each time for
//!   the full time-to-live (`DEFAULT_LEASE_TTL_MS`, 15 s).
//! - A lease can be taken when it expired, or when its host is gone: a host is
//!   alive while its coordinator's database session exists. A killed process
//!   loses its sessions at once, so its partitions move within one check
//!   (≈0.5 s); a host cut off from the network keeps them until they expire.
//! - Shares are fair: the live hosts, ordered by id, each take
//!   `partitions / hosts` partitions of every plugin, and the remainder goes
//!   one each to the hosts after a per-plugin offset.
//! - Every acknowledgement presents the lease's token and locks its row
//!   (`pgevents.ack`), so a host that lost a lease cannot move the cursor, and
//!   a taker waits until an acknowledgement in flight has committed.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::config::SCHEMA;

/// SQL condition: host row `h` is alive.
fn alive(h: &str) -> String {
    format!(
        "({h}.seen_at > clock_timestamp() - make_interval(secs => $ttl)
          AND EXISTS (SELECT 1 FROM pg_stat_activity a
                      WHERE a.pid = {h}.backend_pid AND a.backend_start = {h}.backend_start))"
    )
}

/// `alive(h)` with `$ttl` bound to parameter `$n`.
fn alive_param(h: &str, n: usize) -> String {
    alive(h).replace("$ttl", &format!("${n}"))
}

/// This host's identity in `pgevents.hosts`.
pub fn new_host_id() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let nonce = Uuid::new_v4().simple().to_string();
    format!("{hostname}:{}:{}", std::process::id(), &nonce[..8])
}

/// Record that this host is alive (on this session); returns the live hosts' ids, sorted.
pub async fn heartbeat(
    client: &impl GenericClient,
    host_id: &str,
    ttl: Duration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let hostname = host_id.split(':').next().unwrap_or_default();
    client
        .execute(
            &format!(
                "INSERT INTO {SCHEMA}.hosts (id, hostname, os_pid, backend_pid, backend_start)
                 SELECT $1, $2, $3, pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()
                 ON CONFLICT (id) DO UPDATE SET backend_pid = excluded.backend_pid,
                     backend_start = excluded.backend_start, seen_at = clock_timestamp()"
            ),
            &[&host_id, &hostname, &(std::process::id() as i32)],
        )
        .await?;
    let secs = ttl.as_secs_f64();
    client
        .execute(
            &format!(
                "DELETE FROM {SCHEMA}.hosts h WHERE h.id <> $1 AND NOT {}",
                alive_param("h", 2)
            ),
            &[&host_id, &secs],
        )
        .await?;
    let rows = client
        .query(
            &format!(
                "SELECT h.id FROM {SCHEMA}.hosts h WHERE {} ORDER BY h.id",
                alive_param("h", 1)
            ),
            &[&secs],
        )
        .await?;
    let mut live: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if !live.iter().any(|id| id == host_id) {
        live.push(host_id.to_owned());
        live.sort();
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

/// Take the lease of `plugin` partition `part` if it is free, expired, or its
/// host is gone. Returns the new token.
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
                    OR NOT EXISTS (SELECT 1 FROM {SCHEMA}.hosts h WHERE h.id = l.owner AND {})
                 RETURNING token",
                alive_param("h", 5)
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
