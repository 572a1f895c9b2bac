//! Call leases and call records against real databases: every scenario runs
//! on a SQLite file and on a PostgreSQL schema, through the same code.
//! "Nodes" are separate `Store`s (separate pools) on the same database,
//! racing from tasks of a multi-threaded runtime.

mod common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use sqlx::Connection;
use tokio::sync::Barrier;
use trunkgate::cdr::{CdrSettings, CdrWriter};
use trunkgate::config::DatabaseConfig;
use trunkgate::store::{CallRecord, LeaseOutcome, LeaseRequest, LicenceRow, NewPortal, Store, StoreError};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
}

const T0: &str = "2026-03-01T00:00:00Z";
const S: Duration = Duration::seconds(1);
/// Lease lifetime in these tests.
const TTL: StdDuration = StdDuration::from_secs(30);

/// Runs each scenario on SQLite and PostgreSQL, on a multi-threaded runtime
/// so that racing tasks really run at once.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (_guard, url) = crate::common::sqlite_url();
                    let store = crate::open(&url).await;
                    super::$name(store, url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let url = crate::common::pg_schema_url().await;
                    let store = crate::open(&url).await;
                    super::$name(store, url).await;
                }
            )*
        }
    };
}

both!(
    racing_nodes_never_exceed_channels,
    racing_retransmissions_take_one_channel,
    many_concurrent_admissions_never_fail,
    release_frees_a_channel,
    expired_leases_do_not_count_and_are_purged,
    renew_extends_only_the_nodes_leases,
    node_restart_releases_its_leases,
    duplicate_call_id_is_idempotent,
    admission_records_activity,
    refusals_and_errors,
    cdr_batches_and_flushes_everything_on_shutdown,
    cdr_keeps_records_through_an_outage,
);

/// PostgreSQL only: the row lock that serializes one portal's admissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_admissions_lock_only_their_portal() {
    let url = common::pg_schema_url().await;
    let store = open(&url).await;
    portal(&store, "a").await;
    portal(&store, "b").await;
    let mut holder = sqlx::PgConnection::connect(&url).await.expect("connect");
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut holder).await.expect("pid");
    let mut tx = holder.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM portals WHERE id = 'a' FOR UPDATE").execute(&mut *tx).await.expect("lock a");

    // Another portal is not held up.
    let b = tokio::time::timeout(StdDuration::from_secs(10), store.admit_call(&req("b", "b1", "n1", 1, t(T0))))
        .await
        .expect("portal b is not blocked by a lock on portal a")
        .expect("admit b");
    assert_eq!(b, LeaseOutcome::Admitted { active_after: 1 });

    // Portal a's admission waits for the lock, then sees what its holder did.
    let s = store.clone();
    let waiting = tokio::spawn(async move { s.admit_call(&req("a", "a2", "n2", 1, t(T0))).await });
    let mut watcher = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut poll = tokio::time::interval(StdDuration::from_millis(20));
    tokio::time::timeout(StdDuration::from_secs(10), async {
        loop {
            poll.tick().await;
            let blocked: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))")
                    .bind(holder_pid)
                    .fetch_one(&mut watcher)
                    .await
                    .expect("pg_stat_activity");
            if blocked > 0 {
                break;
            }
        }
    })
    .await
    .expect("the admission of portal a waits on the portal row lock");
    assert!(!waiting.is_finished());
    sqlx::query(
        "INSERT INTO call_leases (call_id, portal_id, node_id, acquired_at, expires_at) VALUES ('a1', 'a', 'n1', $1, $2)",
    )
    .bind(t(T0).timestamp())
    .bind((t(T0) + Duration::seconds(30)).timestamp())
    .execute(&mut *tx)
    .await
    .expect("insert");
    tx.commit().await.expect("commit");
    let a = waiting.await.expect("task").expect("admit a");
    assert_eq!(a, LeaseOutcome::Busy { active: 1 }, "the count after the lock sees the committed lease");
}

async fn open(url: &str) -> Store {
    Store::connect(url, &DatabaseConfig::default()).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

fn free() -> LicenceRow {
    LicenceRow { plan: "free".into(), valid_from: None, valid_until: None, on_expiry: "block".into(), grace_days: 15 }
}

/// A portal created at T0.
async fn portal(store: &Store, id: &str) {
    store
        .portal_add(&NewPortal { id: id.into(), domain: format!("{id}.example.com"), licence: free() }, t(T0))
        .await
        .unwrap_or_else(|e| panic!("add {id}: {e}"));
}

fn req<'a>(portal: &'a str, call_id: &'a str, node_id: &'a str, channels: u32, now: DateTime<Utc>) -> LeaseRequest<'a> {
    LeaseRequest { portal, call_id, node_id, channels, now, ttl: TTL }
}

async fn admit(
    store: &Store,
    portal: &str,
    call_id: &str,
    node: &str,
    channels: u32,
    now: DateTime<Utc>,
) -> LeaseOutcome {
    store
        .admit_call(&req(portal, call_id, node, channels, now))
        .await
        .unwrap_or_else(|e| panic!("admit {call_id}: {e}"))
}

async fn ids(store: &Store, node: Option<&str>, now: DateTime<Utc>) -> Vec<String> {
    store.calls_in_progress(node, now).await.expect("calls").into_iter().map(|r| r.call_id).collect()
}

/// Spawns one task per `(store, portal, call_id, node)`, all released at
/// once, and returns their outcomes in order.
async fn race(calls: Vec<(Store, String, String, String)>, channels: u32, now: DateTime<Utc>) -> Vec<LeaseOutcome> {
    let barrier = Arc::new(Barrier::new(calls.len()));
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(store, portal, call_id, node)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.admit_call(&req(&portal, &call_id, &node, channels, now)).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("task").unwrap_or_else(|e| panic!("concurrent admission failed: {e}")));
    }
    out
}

/// N channels, 3N calls from two nodes at once: exactly N win, the others
/// are busy, and the winners saw 1..=N. Repeated to give a lost race (a
/// missing lock) several chances to show.
async fn racing_nodes_never_exceed_channels(store: Store, url: String) {
    const N: u32 = 4;
    let other = open(&url).await;
    portal(&store, "p").await;
    let now = t(T0);
    for round in 0..5 {
        let calls = (0..3 * N)
            .map(|i| {
                let (s, node) = if i % 2 == 0 { (store.clone(), "n1") } else { (other.clone(), "n2") };
                (s, "p".to_owned(), format!("r{round}-c{i}"), node.to_owned())
            })
            .collect();
        let outcomes = race(calls, N, now).await;
        let mut won: Vec<u32> = outcomes
            .iter()
            .filter_map(|o| match o {
                LeaseOutcome::Admitted { active_after } => Some(*active_after),
                LeaseOutcome::Busy { .. } => None,
            })
            .collect();
        won.sort_unstable();
        assert_eq!(won, (1..=N).collect::<Vec<_>>(), "round {round}: {outcomes:?}");
        let busy: Vec<_> = outcomes.iter().filter(|o| !o.is_admitted()).collect();
        assert_eq!(busy.len(), 2 * N as usize, "round {round}");
        assert!(busy.iter().all(|o| **o == LeaseOutcome::Busy { active: N }), "round {round}: {busy:?}");
        assert_eq!(store.active_calls("p", now).await.expect("count"), N);
        assert_eq!(other.active_calls("p", now).await.expect("count"), N);
        let released = store.release_node_leases("n1").await.expect("release")
            + other.release_node_leases("n2").await.expect("release");
        assert_eq!(released, u64::from(N));
    }
    other.close().await;
}

/// The same INVITE admitted on both nodes at once holds one channel.
async fn racing_retransmissions_take_one_channel(store: Store, url: String) {
    let other = open(&url).await;
    portal(&store, "p").await;
    let now = t(T0);
    let calls = (0..10)
        .map(|i| {
            let s = if i % 2 == 0 { store.clone() } else { other.clone() };
            (s, "p".to_owned(), "same-call".to_owned(), format!("n{}", i % 2))
        })
        .collect();
    let outcomes = race(calls, 5, now).await;
    assert!(outcomes.iter().all(|o| *o == LeaseOutcome::Admitted { active_after: 1 }), "{outcomes:?}");
    assert_eq!(store.active_calls("p", now).await.expect("count"), 1);
    other.close().await;
}

/// Many admissions at once, several portals, two nodes: none fails (on
/// SQLite: no SQLITE_BUSY, thanks to BEGIN IMMEDIATE and the busy timeout),
/// and each portal stops at its channels.
async fn many_concurrent_admissions_never_fail(store: Store, url: String) {
    let other = open(&url).await;
    let portals = ["p0", "p1", "p2", "p3"];
    for p in portals {
        portal(&store, p).await;
    }
    let now = t(T0);
    let calls = (0..48)
        .map(|i| {
            let s = if i % 2 == 0 { store.clone() } else { other.clone() };
            let p = portals[i % portals.len()];
            (s, p.to_owned(), format!("c{i}"), format!("n{}", i % 2))
        })
        .collect();
    let outcomes = race(calls, 5, now).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_admitted()).count(), 4 * 5);
    for p in portals {
        assert_eq!(store.active_calls(p, now).await.expect("count"), 5, "{p}");
    }
    other.close().await;
}

async fn release_frees_a_channel(store: Store, _url: String) {
    portal(&store, "p").await;
    let now = t(T0);
    assert_eq!(admit(&store, "p", "a", "n1", 2, now).await, LeaseOutcome::Admitted { active_after: 1 });
    assert_eq!(admit(&store, "p", "b", "n1", 2, now).await, LeaseOutcome::Admitted { active_after: 2 });
    assert_eq!(admit(&store, "p", "c", "n1", 2, now).await, LeaseOutcome::Busy { active: 2 });
    assert!(store.release_call("a").await.expect("release"));
    assert!(!store.release_call("a").await.expect("release"), "already released");
    assert!(!store.release_call("never").await.expect("release"));
    assert_eq!(admit(&store, "p", "c", "n1", 2, now).await, LeaseOutcome::Admitted { active_after: 2 });
    assert_eq!(ids(&store, None, now).await, ["b", "c"]);
}

async fn expired_leases_do_not_count_and_are_purged(store: Store, _url: String) {
    portal(&store, "p").await;
    let t0 = t(T0);
    admit(&store, "p", "c1", "n1", 2, t0).await; // expires at t0 + 30 s
    admit(&store, "p", "c2", "n1", 2, t0 + S * 10).await; // t0 + 40 s
    assert_eq!(admit(&store, "p", "c3", "n1", 2, t0 + S * 29).await, LeaseOutcome::Busy { active: 2 });
    // The expiry instant is exclusive: at t0 + 30 s c1 is gone.
    assert_eq!(store.active_calls("p", t0 + S * 30).await.expect("count"), 1);
    assert_eq!(admit(&store, "p", "c3", "n1", 2, t0 + S * 30).await, LeaseOutcome::Admitted { active_after: 2 });
    assert_eq!(ids(&store, None, t0 + S * 30).await, ["c2", "c3"]);
    assert_eq!(store.purge_expired_leases(t0 + S * 30).await.expect("purge"), 1);
    assert_eq!(store.purge_expired_leases(t0 + S * 30).await.expect("purge"), 0);
    assert!(!store.release_call("c1").await.expect("release"), "purged");
    assert_eq!(ids(&store, None, t0).await, ["c2", "c3"], "the live ones stay");
    assert_eq!(store.purge_expired_leases(t0 + S * 3600).await.expect("purge"), 2);
    assert!(ids(&store, None, t0).await.is_empty());
}

async fn renew_extends_only_the_nodes_leases(store: Store, _url: String) {
    portal(&store, "p").await;
    let t0 = t(T0);
    admit(&store, "p", "a", "n1", 10, t0).await;
    admit(&store, "p", "b", "n1", 10, t0).await;
    admit(&store, "p", "c", "n2", 10, t0).await;
    assert_eq!(store.renew_leases("n1", t0 + S * 300).await.expect("renew"), 2);
    assert_eq!(store.renew_leases("nobody", t0 + S * 300).await.expect("renew"), 0);
    // n2 did not renew: its lease is gone at t0 + 30 s, n1's live on.
    assert_eq!(ids(&store, None, t0 + S * 60).await, ["a", "b"]);
    assert_eq!(store.active_calls("p", t0 + S * 60).await.expect("count"), 2);
    assert_eq!(ids(&store, Some("n2"), t0).await, ["c"]);
    assert_eq!(ids(&store, Some("n1"), t0).await, ["a", "b"]);
    // A renewal never shortens a lease.
    assert_eq!(store.renew_leases("n1", t0 + S * 100).await.expect("renew"), 2);
    let rows = store.calls_in_progress(Some("n1"), t0).await.expect("calls");
    assert!(rows.iter().all(|r| r.expires() == t0 + S * 300 && r.acquired() == t0), "{rows:?}");
    // A late renewal brings back an expired, unpurged lease: its call is
    // still in progress on n2.
    assert_eq!(store.renew_leases("n2", t0 + S * 120).await.expect("renew"), 1);
    assert_eq!(ids(&store, Some("n2"), t0 + S * 60).await, ["c"]);
}

async fn node_restart_releases_its_leases(store: Store, _url: String) {
    portal(&store, "p").await;
    let t0 = t(T0);
    admit(&store, "p", "a", "n1", 10, t0).await;
    admit(&store, "p", "b", "n1", 10, t0).await;
    admit(&store, "p", "c", "n2", 10, t0).await;
    assert_eq!(store.release_node_leases("n1").await.expect("release"), 2);
    assert_eq!(store.release_node_leases("n1").await.expect("release"), 0);
    assert_eq!(ids(&store, None, t0).await, ["c"]);
    assert_eq!(store.active_calls("p", t0).await.expect("count"), 1);
}

async fn duplicate_call_id_is_idempotent(store: Store, _url: String) {
    portal(&store, "p").await;
    portal(&store, "q").await;
    let t0 = t(T0);
    assert_eq!(admit(&store, "p", "x", "n1", 1, t0).await, LeaseOutcome::Admitted { active_after: 1 });
    // A retransmission is admitted again, even with the portal full, from
    // either node, and takes no second channel.
    assert_eq!(admit(&store, "p", "x", "n1", 1, t0 + S).await, LeaseOutcome::Admitted { active_after: 1 });
    assert_eq!(admit(&store, "p", "x", "n2", 1, t0 + S).await, LeaseOutcome::Admitted { active_after: 1 });
    assert_eq!(admit(&store, "p", "y", "n1", 1, t0 + S).await, LeaseOutcome::Busy { active: 1 });
    let rows = store.calls_in_progress(None, t0 + S).await.expect("calls");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].node_id.as_str(), rows[0].acquired_at), ("n1", t0.timestamp()), "the first lease stays");
    // The same Call-ID on another portal is a conflict, not an admission.
    let err = store.admit_call(&req("q", "x", "n1", 1, t0 + S)).await.expect_err("other portal");
    assert!(matches!(err, StoreError::Conflict { what: "call lease", .. }), "{err}");
    assert_eq!(store.active_calls("q", t0 + S).await.expect("count"), 0);
    // Once expired, the Call-ID is a new call.
    assert_eq!(admit(&store, "q", "x", "n2", 1, t0 + S * 30).await, LeaseOutcome::Admitted { active_after: 1 });
    let rows = store.calls_in_progress(None, t0 + S * 30).await.expect("calls");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].portal_id.as_str(), rows[0].acquired()), ("q", t0 + S * 30));
}

async fn admission_records_activity(store: Store, _url: String) {
    portal(&store, "p").await;
    let t0 = t(T0);
    let activity = async |s: &Store| s.portal("p").await.expect("portal").expect("exists").last_activity_at;
    assert_eq!(activity(&store).await, Some(t0.timestamp()));
    let version = store.change_version().await.expect("version");
    admit(&store, "p", "a", "n1", 1, t0 + S * 100).await;
    assert_eq!(activity(&store).await, Some((t0 + S * 100).timestamp()));
    // Never backwards (a node whose clock is behind)…
    store.release_call("a").await.expect("release");
    admit(&store, "p", "b", "n2", 1, t0 + S * 50).await;
    assert_eq!(activity(&store).await, Some((t0 + S * 100).timestamp()));
    // …and a refusal or a retransmission writes nothing.
    assert!(!admit(&store, "p", "c", "n1", 1, t0 + S * 60).await.is_admitted());
    admit(&store, "p", "b", "n2", 1, t0 + S * 70).await;
    assert_eq!(activity(&store).await, Some((t0 + S * 100).timestamp()));
    assert_eq!(store.change_version().await.expect("version"), version, "admissions do not churn the licence cache");
}

async fn refusals_and_errors(store: Store, _url: String) {
    portal(&store, "p").await;
    let t0 = t(T0);
    let err = store.admit_call(&req("nope", "a", "n1", 5, t0)).await.expect_err("unknown portal");
    assert!(matches!(err, StoreError::NotFound { what: "portal", .. }), "{err}");
    let zero = LeaseRequest { ttl: StdDuration::ZERO, ..req("p", "a", "n1", 5, t0) };
    assert!(matches!(store.admit_call(&zero).await, Err(StoreError::Invalid { field: "ttl", .. })));
    assert_eq!(admit(&store, "p", "a", "n1", 0, t0).await, LeaseOutcome::Busy { active: 0 }, "no channels");
    // A sub-second lifetime still makes a lease that counts.
    let short = LeaseRequest { ttl: StdDuration::from_millis(10), ..req("p", "a", "n1", 5, t0) };
    assert_eq!(store.admit_call(&short).await.expect("admit"), LeaseOutcome::Admitted { active_after: 1 });
    assert_eq!(store.active_calls("p", t0).await.expect("count"), 1);
    assert_eq!(store.active_calls("p", t0 + S).await.expect("count"), 0);
    assert!(ids(&store, None, t0).await.iter().all(|id| id == "a"));
}

fn record(i: usize) -> CallRecord {
    CallRecord {
        id: 0,
        call_id: format!("call-{i}"),
        node_id: "n1".into(),
        portal_id: Some("p".into()),
        trunk: Some("t".into()),
        direction: "inbound".into(),
        caller: None,
        callee: None,
        target_user: None,
        started_at: t(T0).timestamp() + i as i64,
        answered_at: None,
        ended_at: None,
        outcome: "admitted".into(),
        sip_status: None,
        reason: None,
        media: None,
    }
}

async fn assert_all_records(store: &Store, n: usize) {
    let rows = store.call_records(None, None, 100_000).await.expect("records");
    let mut got: Vec<String> = rows.into_iter().map(|r| r.call_id).collect();
    got.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("call-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "every record, once");
}

/// With an hour-long interval, records go out only as full batches of 500,
/// and the rest at shutdown: 1234 records, 3 transactions, none lost.
async fn cdr_batches_and_flushes_everything_on_shutdown(store: Store, _url: String) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = CdrSettings { flush_interval: StdDuration::from_secs(3600), ..CdrSettings::default() };
    let (writer, task) = CdrWriter::start_with(store.clone(), settings, shutdown.clone());
    for i in 0..1234 {
        writer.record(record(i));
    }
    let mut stats = writer.watch_stats();
    tokio::time::timeout(StdDuration::from_secs(30), stats.wait_for(|s| s.written == 1000))
        .await
        .unwrap_or_else(|_| panic!("two full batches not written: {:?}", writer.stats()))
        .expect("writer alive");
    shutdown.cancel();
    task.await.expect("writer task");
    let s = writer.stats();
    assert_eq!((s.written, s.batches, s.pending, s.dropped, s.failed_attempts), (1234, 3, 0, 0, 0));
    assert_all_records(&store, 1234).await;
}

/// Runs one statement on the test database outside the store.
async fn exec(url: &str, sql: &'static str) {
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut c).await.expect(sql);
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut c).await.expect(sql);
    }
}

/// The table disappears (as good as an unreachable database for the
/// writer): records are kept and retried, and all land once it is back.
async fn cdr_keeps_records_through_an_outage(store: Store, url: String) {
    exec(&url, "ALTER TABLE call_records RENAME TO call_records_away").await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = CdrSettings {
        flush_interval: StdDuration::from_millis(20),
        retry_min: StdDuration::from_millis(10),
        retry_max: StdDuration::from_millis(50),
        ..CdrSettings::default()
    };
    let (writer, task) = CdrWriter::start_with(store.clone(), settings, shutdown.clone());
    for i in 0..50 {
        writer.record(record(i));
    }
    let mut stats = writer.watch_stats();
    tokio::time::timeout(StdDuration::from_secs(30), stats.wait_for(|s| s.failed_attempts >= 3 && s.pending == 50))
        .await
        .expect("the writer retries and keeps the records")
        .expect("writer alive");
    for i in 50..60 {
        writer.record(record(i));
    }
    exec(&url, "ALTER TABLE call_records_away RENAME TO call_records").await;
    tokio::time::timeout(StdDuration::from_secs(30), stats.wait_for(|s| s.written == 60 && s.pending == 0))
        .await
        .expect("records written once the database is back")
        .expect("writer alive");
    shutdown.cancel();
    task.await.expect("writer task");
    assert_eq!(writer.stats().dropped, 0);
    assert_all_records(&store, 60).await;
}
