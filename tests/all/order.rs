//! Order: every row's changes arrive in the order they happened, whichever
//! transaction wrote first, with any number of partitions, across a killed
//! host and across the upgrade from the release that read in (txid, seq)
//! order.
//!
//! The tests rebuild each table from what the `mirror` plugin received (it
//! copies every event into `public.delivered` through the sql capability, so
//! `delivered` in insertion order is the delivered stream, once each in
//! effect) and compare it with the real table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_postgres::Client;

use pgevents_host::observer::HostEvent;

use crate::support::*;

/// Tables of these tests: a small key space, so that writers collide.
const TABLES: &str = "
    CREATE TABLE public.user_accounts (id int PRIMARY KEY, name text);
    CREATE TABLE public.orders (id int PRIMARY KEY, status text);
    CREATE TABLE public.ra (id int PRIMARY KEY, v int NOT NULL);
    CREATE TABLE public.rb (id int PRIMARY KEY, v int NOT NULL);
";

/// The `mirror` plugin's table and role; returns its config section.
async fn mirror(db: &TestDb, tables: &str, partitions: u32) -> String {
    let role = db.role("mirror").await;
    db.client()
        .await
        .batch_execute(&format!(
            "{TABLES}
             CREATE TABLE public.delivered (n bigserial PRIMARY KEY, event_id uuid NOT NULL,
                 txid bigint, seq bigint, op text, tbl text, pk jsonb, new_row jsonb, old_row jsonb);
             GRANT INSERT ON public.delivered TO {role};
             GRANT USAGE ON SEQUENCE public.delivered_n_seq TO {role};"
        ))
        .await
        .expect("mirror tables");
    format!(
        "[plugins.mirror]\npartitions = {partitions}\nstart_from = \"beginning\"\n\
         sql = {{ role = \"{role}\" }}\nconfig = {{ tables = \"{tables}\" }}\n"
    )
}

/// One row of `delivered`.
#[derive(Debug, Clone)]
struct Delivered {
    event_id: String,
    txid: i64,
    op: String,
    table: String,
    key: Option<Value>,
    new: Option<Value>,
    old: Option<Value>,
}

async fn delivered(client: &Client) -> Vec<Delivered> {
    client
        .query(
            "SELECT event_id::text, txid, op, tbl, pk, new_row, old_row FROM public.delivered ORDER BY n",
            &[],
        )
        .await
        .expect("delivered")
        .iter()
        .map(|r| Delivered {
            event_id: r.get(0),
            txid: r.get(1),
            op: r.get(2),
            table: r.get(3),
            key: r.get(4),
            new: r.get(5),
            old: r.get(6),
        })
        .collect()
}

/// Wait until `delivered` holds at least as many rows as the log holds events
/// of `tables` (every writer has finished by then).
async fn wait_delivered(client: &Client, tables: &[&str]) {
    let names: Vec<String> = tables.iter().map(|t| format!("'{t}'")).collect();
    eventually(
        client,
        "the mirror plugin received every event",
        &format!(
            "SELECT (SELECT count(*) FROM public.delivered)
                    >= (SELECT count(*) FROM pgevents.events WHERE table_name IN ({}))",
            names.join(", ")
        ),
    )
    .await;
}

/// `row` projected on the columns of `key` (a JSON object), as a map key.
fn key_of(row: &Value, key: &Value) -> String {
    let columns = key.as_object().expect("key object").keys();
    let projected: serde_json::Map<String, Value> = columns
        .map(|c| (c.clone(), row.get(c).cloned().unwrap_or(Value::Null)))
        .collect();
    Value::Object(projected).to_string()
}

/// A copy of the tables built by applying delivered events in order. Every
/// update's and delete's old row must be the copy's current row for its key.
#[derive(Debug, Default)]
struct Replica {
    tables: HashMap<String, BTreeMap<String, Value>>,
    problems: Vec<String>,
    /// Per table and key: the transaction of the event that last changed it.
    last_writer: HashMap<(String, String), i64>,
    /// Consecutive changes of one row whose transaction ids run backwards:
    /// what reading in (txid, seq) order delivered the wrong way round.
    inversions: usize,
}

impl Replica {
    fn apply(&mut self, d: &Delivered) {
        let rows = self.tables.entry(d.table.clone()).or_default();
        let mut touch = |key: String| {
            if let Some(before) = self.last_writer.insert((d.table.clone(), key), d.txid)
                && before > d.txid
            {
                self.inversions += 1;
            }
        };
        match d.op.as_str() {
            "insert" => {
                let (Some(key), Some(new)) = (&d.key, &d.new) else {
                    return self
                        .problems
                        .push(format!("insert without key or row: {d:?}"));
                };
                let k = key.to_string();
                if let Some(existing) = rows.get(&k) {
                    self.problems.push(format!(
                        "{}: insert of {k}, which the copy already holds as {existing}",
                        d.table
                    ));
                }
                rows.insert(k.clone(), new.clone());
                touch(k);
            }
            "update" | "delete" => {
                let (Some(key), Some(old)) = (&d.key, &d.old) else {
                    return self
                        .problems
                        .push(format!("{} without key or old row: {d:?}", d.op));
                };
                let old_key = key_of(old, key);
                match rows.get(&old_key) {
                    Some(current) if current == old => {}
                    current => self.problems.push(format!(
                        "{}: {} of {old_key} says the row was {old}, the copy has {current:?}",
                        d.table, d.op
                    )),
                }
                rows.remove(&old_key);
                touch(old_key);
                if d.op == "update" {
                    let new = d.new.clone().expect("update carries a new row");
                    let k = key.to_string();
                    rows.insert(k.clone(), new);
                    touch(k);
                }
            }
            "truncate" => rows.clear(),
            other => self.problems.push(format!("unknown operation {other}")),
        }
    }

    fn of(events: &[Delivered]) -> Replica {
        let mut replica = Replica::default();
        for d in events {
            replica.apply(d);
        }
        replica
    }

    /// Differences between the copy of `table` (`schema.table`, keyed by
    /// `id`) and the table.
    async fn compare(&self, client: &Client, table: &str) -> Vec<String> {
        let actual: BTreeMap<String, Value> = client
            .query(&format!("SELECT to_jsonb(t) FROM {table} t"), &[])
            .await
            .expect("table")
            .iter()
            .map(|r| {
                let row: Value = r.get(0);
                (serde_json::json!({ "id": row["id"] }).to_string(), row)
            })
            .collect();
        let empty = BTreeMap::new();
        let copy = self.tables.get(table).unwrap_or(&empty);
        let mut diff = Vec::new();
        for (k, row) in &actual {
            if copy.get(k) != Some(row) {
                diff.push(format!("{table} {k}: table {row}, copy {:?}", copy.get(k)));
            }
        }
        for (k, row) in copy {
            if !actual.contains_key(k) {
                diff.push(format!("{table} {k}: not in the table, copy {row}"));
            }
        }
        diff
    }
}

/// No event id twice in `delivered`.
fn duplicates(events: &[Delivered]) -> Vec<String> {
    let mut ids = HashSet::new();
    events
        .iter()
        .filter(|d| !ids.insert(d.event_id.clone()))
        .map(|d| d.event_id.clone())
        .collect()
}

/// The first scenario: A writes elsewhere first (taking its
/// transaction id), B changes the order and commits, then A changes it too.
#[tokio::test]
async fn a_row_changed_by_two_transactions_arrives_in_the_order_it_changed() {
    let db = TestDb::new().await;
    let config = mirror(&db, "public.user_accounts,public.orders", 1).await;
    let host = Host::start_with(&db, plugins_dir(&["mirror"]), settings_with(&config)).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO orders VALUES (1, 'new')")
        .await
        .unwrap();
    let a = db.client().await;
    let b = db.client().await;
    a.batch_execute("BEGIN; INSERT INTO user_accounts VALUES (1, 'a')")
        .await
        .unwrap();
    b.batch_execute("BEGIN; UPDATE orders SET status = 'paid' WHERE id = 1; COMMIT")
        .await
        .unwrap();
    a.batch_execute("UPDATE orders SET status = 'shipped' WHERE id = 1; COMMIT")
        .await
        .unwrap();
    wait_delivered(&c, &["user_accounts", "orders"]).await;
    let events = delivered(&c).await;
    let statuses: Vec<_> = events
        .iter()
        .filter(|d| d.table == "public.orders")
        .map(|d| {
            d.new.as_ref().unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["new", "paid", "shipped"]);
    let replica = Replica::of(&events);
    assert!(replica.problems.is_empty(), "{:#?}", replica.problems);
    for table in ["public.orders", "public.user_accounts"] {
        let diff = replica.compare(&c, table).await;
        assert!(diff.is_empty(), "{diff:#?}");
    }
    assert_eq!(replica.inversions, 1, "the scenario is the one that broke");
    host.stop().await;
}

/// The TRUNCATE variant: A writes first, B truncates and commits, A inserts
/// and commits. The insert comes after the truncate, so the copy keeps it.
#[tokio::test]
async fn an_insert_after_a_truncate_arrives_after_it() {
    let db = TestDb::new().await;
    let config = mirror(&db, "public.user_accounts,public.orders", 1).await;
    let host = Host::start_with(&db, plugins_dir(&["mirror"]), settings_with(&config)).await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO orders VALUES (1, 'new'), (2, 'new')")
        .await
        .unwrap();
    let a = db.client().await;
    let b = db.client().await;
    a.batch_execute("BEGIN; INSERT INTO user_accounts VALUES (1, 'a')")
        .await
        .unwrap();
    b.batch_execute("TRUNCATE orders").await.unwrap();
    a.batch_execute("INSERT INTO orders VALUES (5, 'new'); COMMIT")
        .await
        .unwrap();
    wait_delivered(&c, &["user_accounts", "orders"]).await;
    let events = delivered(&c).await;
    let replica = Replica::of(&events);
    assert!(replica.problems.is_empty(), "{:#?}", replica.problems);
    let diff = replica.compare(&c, "public.orders").await;
    assert!(diff.is_empty(), "{diff:#?}");
    let ops: Vec<_> = events
        .iter()
        .filter(|d| d.table == "public.orders")
        .map(|d| d.op.as_str())
        .collect();
    assert_eq!(ops, ["insert", "insert", "truncate", "insert"]);
    host.stop().await;
}

/// What one writer did, for the test's report.
#[derive(Debug, Default, Clone, Copy)]
struct WriterStats {
    committed: usize,
    rolled_back: usize,
    failed: usize,
}

/// A random history: `writers` sessions each run `transactions` transactions
/// of random inserts (upserts), updates, deletes, primary-key changes and the
/// odd TRUNCATE over keys 1..=6 of `ra` and `rb`. A third of the
/// transactions first write to the other table, then sleep while others
/// commit. Errors (unique violations, deadlocks, lock timeouts) roll the
/// transaction back; so does 1 in 20 on purpose.
async fn random_history(url: &str, seed: u64, writers: u64, transactions: usize) -> WriterStats {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w));
                let c = connect(&url).await;
                c.batch_execute("SET lock_timeout = '3s'").await.unwrap();
                let mut stats = WriterStats::default();
                for _ in 0..transactions {
                    let mut statements = vec!["BEGIN".to_owned()];
                    let table = if rng.random_bool(0.5) { "ra" } else { "rb" };
                    let other = if table == "ra" { "rb" } else { "ra" };
                    let early = rng.random_bool(0.33);
                    if early {
                        let k = rng.random_range(1..=6);
                        statements.push(format!(
                            "INSERT INTO {other} (id, v) VALUES ({k}, 0) ON CONFLICT (id) DO UPDATE SET v = {other}.v + 100"
                        ));
                    }
                    for _ in 0..rng.random_range(1..=4) {
                        let k = rng.random_range(1..=6);
                        let v = rng.random_range(0..1000);
                        statements.push(match rng.random_range(0..100) {
                            0..=29 => format!(
                                "INSERT INTO {table} (id, v) VALUES ({k}, {v}) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v"
                            ),
                            30..=59 => format!("UPDATE {table} SET v = v + 1 WHERE id = {k}"),
                            60..=79 => format!("DELETE FROM {table} WHERE id = {k}"),
                            80..=97 => {
                                let to = rng.random_range(1..=6);
                                format!("UPDATE {table} SET id = {to} WHERE id = {k}")
                            }
                            _ => format!("TRUNCATE {table}"),
                        });
                    }
                    let mut ok = true;
                    for (i, statement) in statements.iter().enumerate() {
                        if let Err(e) = c.batch_execute(statement).await {
                            let state = e.as_db_error().map(|d| d.code().code().to_owned());
                            assert!(
                                matches!(state.as_deref(), Some("23505" | "40P01" | "55P03")),
                                "seed {seed}: unexpected error from `{statement}`: {e}"
                            );
                            ok = false;
                            break;
                        }
                        // Hold the transaction open across others' commits.
                        if (i == 1 && early) || rng.random_bool(0.15) {
                            let ms = rng.random_range(1..=15);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                    }
                    if !ok {
                        c.batch_execute("ROLLBACK").await.unwrap();
                        stats.failed += 1;
                    } else if rng.random_ratio(1, 20) {
                        c.batch_execute("ROLLBACK").await.unwrap();
                        stats.rolled_back += 1;
                    } else {
                        match c.batch_execute("COMMIT").await {
                            Ok(()) => stats.committed += 1,
                            Err(e) => panic!("seed {seed}: commit failed: {e}"),
                        }
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = WriterStats::default();
    for t in tasks {
        let s = t.await.expect("writer");
        total.committed += s.committed;
        total.rolled_back += s.rolled_back;
        total.failed += s.failed;
    }
    total
}

/// The seed for a randomized test: `PGEVENTS_TEST_SEED`, or a new one. Printed,
/// so that a failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("PGEVENTS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with PGEVENTS_TEST_SEED={seed})");
    seed
}

/// Check a randomized run: the copy rebuilt from the delivered stream equals
/// the tables, every old row is the previous new row, nothing came twice.
async fn check_history(c: &Client, seed: u64, stats: WriterStats, what: &str) {
    wait_delivered(c, &["ra", "rb"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = delivered(c).await;
    let dup = duplicates(&events);
    assert!(
        dup.is_empty(),
        "seed {seed}: delivered twice: {dup:?} ({what})"
    );
    let replica = Replica::of(&events);
    let mut diff = replica.compare(c, "public.ra").await;
    diff.extend(replica.compare(c, "public.rb").await);
    eprintln!(
        "{what}: seed {seed}: {} events, {} transactions committed, {} rolled back, {} failed; \
         {} consecutive changes of a row came from transactions in reverse id order",
        events.len(),
        stats.committed,
        stats.rolled_back,
        stats.failed,
        replica.inversions
    );
    assert!(
        replica.problems.is_empty() && diff.is_empty(),
        "seed {seed} ({what}): old rows that were not the previous new row: {:#?}\ncopy vs table: {diff:#?}",
        replica.problems
    );
    // The history must contain what reading in (txid, seq) order got wrong,
    // or this test could not have caught it.
    assert!(
        replica.inversions > 0,
        "seed {seed}: the history had no row changed by transactions in reverse id order"
    );
}

async fn randomized(partitions: u32) {
    let seed = seed(&format!("randomized history, {partitions} partition(s)"));
    let db = TestDb::new().await;
    let config = mirror(&db, "public.ra,public.rb", partitions).await;
    let host = Host::start_with(&db, plugins_dir(&["mirror"]), settings_with(&config)).await;
    let stats = random_history(&db.url, seed, 6, 60).await;
    let c = db.client().await;
    check_history(&c, seed, stats, &format!("{partitions} partition(s)")).await;
    host.stop().await;
}

#[tokio::test]
async fn a_random_history_with_collisions_rebuilds_exactly_in_one_partition() {
    randomized(1).await;
}

#[tokio::test]
async fn a_random_history_with_collisions_rebuilds_exactly_in_four_partitions() {
    randomized(4).await;
}

/// The same with a host process killed (SIGKILL) in the middle of the
/// history and started again.
#[tokio::test]
async fn a_random_history_rebuilds_exactly_across_a_killed_host() {
    let seed = seed("randomized history, host killed");
    let db = TestDb::new().await;
    let config = mirror(&db, "public.ra,public.rb", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("host.toml");
    std::fs::write(&config_file, &config).unwrap();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(plugin("mirror"), plugins.path().join("mirror.wasm")).unwrap();
    let args = [
        "--config",
        config_file.to_str().unwrap(),
        "--lease-ttl",
        "3s",
        "--handle-timeout",
        "1s",
    ];
    let mut host = HostProcess::spawn(&db, plugins.path(), &args);
    let c = db.client().await;
    eventually(
        &c,
        "the host installed its schema",
        "SELECT to_regclass('pgevents.cursors') IS NOT NULL",
    )
    .await;
    eventually(
        &c,
        "the host captures both tables",
        "SELECT count(DISTINCT tgrelid) = 2 FROM pg_trigger
         WHERE tgname LIKE 'pgevents_capture_%'
           AND tgrelid IN ('public.ra'::regclass, 'public.rb'::regclass)",
    )
    .await;
    let url = db.url.clone();
    let history = tokio::spawn(async move { random_history(&url, seed, 6, 80).await });
    // Kill it once some events are through, while writers go on.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n: i64 = c
            .query_one("SELECT count(*) FROM public.delivered", &[])
            .await
            .unwrap()
            .get(0);
        if n >= 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing delivered:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut host = HostProcess::spawn(&db, plugins.path(), &args);
    let stats = history.await.unwrap();
    check_history(&c, seed, stats, "host killed and restarted").await;
    host.stop();
}

/// The id scheme of every release so far: a name-based UUID of the event's
/// transaction id and sequence number. Plugins deduplicate on it, so an
/// upgrade must keep it.
fn release_event_id(txid: u64, seq: i64) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d0c_1b6e_8a7e_4f1c_9c3e_2f4b_7a61_0e11);
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(&txid.to_be_bytes());
    name[8..].copy_from_slice(&seq.to_be_bytes());
    uuid::Uuid::new_v5(&NAMESPACE, &name).to_string()
}

/// A database as the previous release (schema 4, reading in (txid, seq)
/// order) left it, with cursors in the middle of the stream, events waiting
/// and a failed attempt counted, upgrades in place: each plugin gets exactly
/// the events it had not acknowledged, once, with the same ids and attempt
/// numbers, in the order the previous release would have delivered them;
/// what is written after the upgrade comes after.
#[tokio::test]
async fn the_previous_release_upgrades_in_place_with_nothing_lost_or_repeated() {
    let db = TestDb::new().await;
    let config = mirror(&db, "public.items", 2).await;
    let mut admin = db.client().await;
    pgevents_host::schema::install_up_to(&mut admin, 4)
        .await
        .unwrap();
    admin
        .batch_execute(
            "CREATE TRIGGER pgevents_capture_insert AFTER INSERT ON public.items
                 REFERENCING NEW TABLE AS pgevents_new_rows FOR EACH STATEMENT
                 EXECUTE FUNCTION pgevents.capture('quiet', 'id');",
        )
        .await
        .unwrap();
    // A writes first, B commits first: the previous release delivers A, then B.
    let a = db.client().await;
    let b = db.client().await;
    a.batch_execute("BEGIN; INSERT INTO items (name) VALUES ('a1'), ('a2'), ('a3')")
        .await
        .unwrap();
    b.batch_execute("INSERT INTO items (name) VALUES ('b1'), ('b2')")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let log: Vec<(u64, i64, String)> = admin
        .query(
            "SELECT txid::text, seq, new_row->>'name' FROM pgevents.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, &str>(0).parse().unwrap(), r.get(1), r.get(2)))
        .collect();
    let names: Vec<&str> = log.iter().map(|(_, _, n)| n.as_str()).collect();
    assert_eq!(names, ["a1", "a2", "a3", "b1", "b2"]);
    let at = |name: &str| log.iter().find(|(_, _, n)| n == name).unwrap().clone();
    // `recorder` acknowledged a1 and failed a2 twice; `mirror`'s partition 0
    // is at a3, partition 1 at a1.
    let (a_txid, a1, _) = at("a1");
    let (_, a2, _) = at("a2");
    let (_, a3, _) = at("a3");
    admin
        .batch_execute(&format!(
            "INSERT INTO pgevents.cursors (plugin, part, parts, txid, seq) VALUES
                 ('recorder', 0, 1, '{a_txid}', {a1}),
                 ('mirror', 0, 2, '{a_txid}', {a3}),
                 ('mirror', 1, 2, '{a_txid}', {a1});
             INSERT INTO pgevents.attempts (plugin, part, txid, seq, failures, last_error)
             VALUES ('recorder', 0, '{a_txid}', {a2}, 2, 'it failed');"
        ))
        .await
        .unwrap();
    // What each partition of `mirror` has not acknowledged, by the old order.
    let mirror_expected: HashSet<String> = admin
        .query(
            "SELECT e.txid::text, e.seq FROM pgevents.events e JOIN pgevents.cursors c
                 ON c.plugin = 'mirror'
                AND c.part = pgevents.part_of(e.schema_name, e.table_name, e.pk, 2)
             WHERE (e.txid, e.seq) > (c.txid, c.seq)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| release_event_id(r.get::<_, &str>(0).parse().unwrap(), r.get(1)))
        .collect();

    let mut host = Host::start_with(
        &db,
        plugins_dir(&["recorder", "mirror"]),
        settings_with(&config),
    )
    .await;
    admin
        .batch_execute("INSERT INTO items (name) VALUES ('c1')")
        .await
        .unwrap();
    let seen = host.wait_seen("recorder", 5).await;
    let names: Vec<String> = seen.iter().map(|s| s.row_str("name").unwrap()).collect();
    assert_eq!(names, ["a2", "a3", "b1", "b2", "c1"]);
    for s in &seen {
        assert_eq!(s.id, release_event_id(s.txid, s.seq as i64), "{s:?}");
    }
    assert_eq!(seen[0].attempt, 3, "the attempt count survived the upgrade");
    assert_eq!(seen[1].attempt, 1);
    eventually(
        &admin,
        "mirror received what it had not acknowledged, and c1",
        &format!(
            "SELECT count(*) >= {} FROM public.delivered",
            mirror_expected.len() + 1
        ),
    )
    .await;
    let c1: String = admin
        .query_one(
            "SELECT event_id::text FROM public.delivered WHERE new_row->>'name' = 'c1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    host.settle(Duration::from_millis(300)).await;
    let events = delivered(&admin).await;
    assert!(duplicates(&events).is_empty(), "{events:#?}");
    let got: HashSet<String> = events.iter().map(|d| d.event_id.clone()).collect();
    let mut expected = mirror_expected;
    expected.insert(c1);
    assert_eq!(got, expected);
    host.settle(Duration::from_millis(200)).await;
    assert_eq!(host.seen("recorder").len(), 5);
    host.stop().await;
}

/// A backlog of transactions that interleaved (each spans many others' sequence
/// numbers) is still read in full windows, not a transaction or two at a time.
#[tokio::test]
async fn a_backlog_of_interleaved_transactions_is_read_in_full_windows() {
    let db = TestDb::new().await;
    // Register the plugin (and install capture), then write with no host running.
    Host::start(&db, &["recorder"]).await.stop().await;
    let writers: Vec<_> = (0..20)
        .map(|w| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let c = connect(&url).await;
                c.batch_execute("BEGIN").await.unwrap();
                for i in 0..10 {
                    c.execute(
                        "INSERT INTO items (name) VALUES ($1)",
                        &[&format!("w{w} {i}")],
                    )
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                c.batch_execute("COMMIT").await.unwrap();
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut host = Host::start(&db, &["recorder"]).await;
    host.wait_seen("recorder", 200).await;
    host.settle(Duration::from_millis(200)).await;
    let batches: Vec<usize> = host
        .history
        .iter()
        .filter_map(|e| match e {
            HostEvent::BatchHandled { events, .. } => Some(*events),
            _ => None,
        })
        .collect();
    // The recorder asks for batches of 100.
    assert_eq!(batches, [100, 100], "batch sizes");
    host.stop().await;
}

/// A tick that finds nothing new writes nothing; a ticker state from another
/// cluster (a logical dump restored here) stops ticking with the reason
/// rather than skip events.
#[tokio::test]
async fn ticks_write_only_when_they_number_something_and_refuse_a_foreign_snapshot() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    let ticks = || async {
        let c = db.client().await;
        let row = c
            .query_one("SELECT ticks, xmin::text FROM pgevents.ticker", &[])
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, String>(1))
    };
    let before = ticks().await;
    for look_first in [true, false] {
        c.query_one("SELECT * FROM pgevents.tick($1)", &[&look_first])
            .await
            .unwrap();
    }
    assert_eq!(ticks().await, before, "a tick with nothing to number wrote");
    c.batch_execute("INSERT INTO items (name) VALUES ('x')")
        .await
        .unwrap();
    c.query_one("SELECT * FROM pgevents.tick(false)", &[])
        .await
        .unwrap();
    assert_eq!(ticks().await.0, before.0 + 1);

    c.batch_execute(
        "UPDATE pgevents.ticker SET snapshot = '999999999999:999999999999:';
         INSERT INTO items (name) VALUES ('y')",
    )
    .await
    .unwrap();
    let error = c
        .query_one("SELECT * FROM pgevents.tick(true)", &[])
        .await
        .unwrap_err();
    let text = pgevents_host::db::error_text(&error);
    assert!(text.contains("restored from another cluster"), "{text}");
}

/// A database (or role) whose default isolation is stricter than READ
/// COMMITTED: the host's sessions still run READ COMMITTED, so two hosts'
/// ticks do not fail each other, and everything arrives.
#[tokio::test]
async fn a_stricter_default_isolation_does_not_reach_the_hosts_sessions() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_isolation = 'serializable'",
            db.name
        ))
        .await
        .unwrap();
    let c = pgevents_host::db::connect_once(&db.url).await.unwrap();
    let level: String = c
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "read committed");
    let mut one = Host::start(&db, &["recorder"]).await;
    let two = Host::start(&db, &["recorder"]).await;
    let writer = db.client().await;
    for i in 0..50 {
        writer
            .execute(
                "INSERT INTO items (name) VALUES ($1)",
                &[&format!("row {i}")],
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + PATIENCE;
    let mut two = two;
    loop {
        one.settle(Duration::from_millis(100)).await;
        two.settle(Duration::from_millis(100)).await;
        let mut ids: HashSet<String> = one.seen("recorder").into_iter().map(|s| s.id).collect();
        ids.extend(two.seen("recorder").into_iter().map(|s| s.id));
        if ids.len() == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "{} of 50 delivered", ids.len());
    }
    one.stop().await;
    two.stop().await;
}

/// With a DEFERRABLE primary key a writer inserting a key another deletes
/// does not wait for it, so those two may arrive either way round: the host
/// says so when it registers a plugin on such a table.
#[tokio::test]
async fn a_deferrable_primary_key_is_named_in_a_warning() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE public.deferred (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text)",
        )
        .await
        .unwrap();
    let dir = plugins_dir(&["hostile"]);
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        "[plugins.hostile]\nconfig = { table = \"deferred\" }\n",
    )
    .unwrap();
    let out = host_bin()
        .args(["install", "--database-url", &db.url, "--plugins"])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("DEFERRABLE") && stderr.contains("\"public\".\"deferred\""),
        "{stderr}"
    );
}

/// Transactions exactly one window long, with nothing written after them:
/// each window ends a transaction, and the next is read at once (not after
/// an idle wait for a notification that never comes).
#[tokio::test]
async fn a_backlog_of_window_sized_transactions_drains_without_waiting() {
    let db = TestDb::new().await;
    Host::start(&db, &["recorder"]).await.stop().await;
    let c = db.client().await;
    for t in 0..5 {
        // The recorder asks for batches of 100.
        c.execute(
            "INSERT INTO items (name) SELECT $1 || g FROM generate_series(1, 100) g",
            &[&format!("t{t}-")],
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    let mut host = Host::start(&db, &["recorder"]).await;
    host.wait_seen("recorder", 500).await;
    // Four idle waits of 2 s would show; a loaded machine does not take 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "500 events took {:?}",
        started.elapsed()
    );
    host.stop().await;
}
