//! A fleet's channel allowances (decision 0006) against a real PostgreSQL:
//! "nodes" are separate `Store`s (separate pools) on one schema, each with
//! its own `Channels`, racing from tasks of a multi-threaded runtime. Time
//! is an argument: expiry is tested in virtual time, not by waiting.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;
use trunkgate::config::DatabaseConfig;
use trunkgate::node::channels::Channels;
use trunkgate::store::{GrantRequest, LeaseOutcome, LicenceRow, NewPortal, Store};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
}

const T0: &str = "2026-03-01T00:00:00Z";
/// Allowance lifetime in these tests (the daemon's: 60 s).
const TTL: StdDuration = StdDuration::from_secs(60);

async fn open(url: &str) -> Store {
    Store::connect(url, &DatabaseConfig::default()).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn portal(store: &Store, id: &str) {
    let licence = LicenceRow {
        plan: "free".into(),
        valid_from: None,
        valid_until: None,
        on_expiry: "block".into(),
        grace_days: 15,
    };
    store
        .portal_add(&NewPortal { id: id.into(), domain: format!("{id}.example.com"), licence }, t(T0))
        .await
        .unwrap_or_else(|e| panic!("add {id}: {e}"));
}

/// A fleet node on its own pool, answering the others' asks for spare.
async fn node(url: &str, id: &str, stop: &CancellationToken) -> Arc<Channels> {
    let channels = Arc::new(Channels::fleet(open(url).await, id, TTL));
    tokio::spawn(channels.clone().listen_for_asks(url.to_owned(), stop.clone()));
    channels
}

/// A fresh schema with portal `p`, and nodes `a` and `b` on it (stopped by
/// the token).
async fn two_nodes() -> (Store, CancellationToken, Arc<Channels>, Arc<Channels>) {
    let url = common::pg_schema_url().await;
    let store = open(&url).await;
    portal(&store, "p").await;
    let stop = CancellationToken::new();
    let (a, b) = (node(&url, "a", &stop).await, node(&url, "b", &stop).await);
    (store, stop, a, b)
}

/// Σ granted of the portal's unexpired allowances at `now`.
async fn granted(store: &Store, portal: &str, now: DateTime<Utc>) -> Vec<(String, i64)> {
    store.allowances(Some(portal), now).await.expect("allowances").into_iter().map(|r| (r.node_id, r.granted)).collect()
}

/// The portal's allowances once `ok` holds of them (what a background grant
/// or return leaves), or as they are after 2 s.
async fn wait_granted(store: &Store, now: DateTime<Utc>, ok: impl Fn(&[(String, i64)]) -> bool) -> Vec<(String, i64)> {
    let mut held = Vec::new();
    for _ in 0..100 {
        held = granted(store, "p", now).await;
        if ok(&held) {
            break;
        }
        tokio::time::sleep_until(tokio::time::Instant::now() + StdDuration::from_millis(20)).await;
    }
    held
}

async fn take(node: &Channels, channels: u32, now: DateTime<Utc>) -> LeaseOutcome {
    node.take("p", channels, now).await.unwrap_or_else(|e| panic!("take: {e}"))
}

/// Lets the LISTEN connections come up (a NOTIFY sent before LISTEN is lost).
async fn settle() {
    tokio::time::sleep_until(tokio::time::Instant::now() + StdDuration::from_millis(300)).await;
}

/// Two nodes, six tasks each, taking and releasing a 10-channel portal at
/// random for 1,500 calls per node. A shared counter holds the calls up
/// across both nodes at every instant: it never passes 10. A watcher reads
/// the allowances all along: their sum never passes 10. And the race did
/// not starve: most calls were admitted, and both nodes admitted some.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_nodes_never_admit_past_the_channels() {
    const K: u32 = 10;
    const TASKS: u64 = 6;
    const CALLS_PER_TASK: u64 = 250;
    let url = common::pg_schema_url().await;
    let store = open(&url).await;
    portal(&store, "p").await;
    let stop = CancellationToken::new();
    let nodes = [node(&url, "n1", &stop).await, node(&url, "n2", &stop).await];
    settle().await;
    let now = t(T0);
    let up = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let admitted = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let busy = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut max_sum = 0;
            let mut reads = 0u32;
            while !done.load(Ordering::Relaxed) {
                let sum: i64 = granted(&store, "p", now).await.iter().map(|(_, g)| g).sum();
                max_sum = max_sum.max(sum);
                reads += 1;
            }
            (max_sum, reads)
        })
    };
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for task in 0..TASKS {
            let (node, up, peak, admitted, busy) =
                (node.clone(), up.clone(), peak.clone(), admitted[n].clone(), busy.clone());
            tasks.push(tokio::spawn(async move {
                // xorshift: a different, reproducible walk per task.
                let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ ((n as u64) << 32 | task);
                let mut held = 0u32;
                for _ in 0..CALLS_PER_TASK {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if held > 0 && x.is_multiple_of(3) {
                        up.fetch_sub(1, Ordering::SeqCst);
                        node.release("p");
                        held -= 1;
                    }
                    match take(&node, K, now).await {
                        LeaseOutcome::Admitted { .. } => {
                            let now_up = up.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now_up, Ordering::SeqCst);
                            admitted.fetch_add(1, Ordering::Relaxed);
                            held += 1;
                        }
                        LeaseOutcome::Busy { .. } => {
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if x.is_multiple_of(5) {
                        tokio::task::yield_now().await;
                    }
                }
                for _ in 0..held {
                    up.fetch_sub(1, Ordering::SeqCst);
                    node.release("p");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    done.store(true, Ordering::Relaxed);
    let (max_sum, reads) = watcher.await.expect("watcher");
    let (a1, a2) = (admitted[0].load(Ordering::Relaxed), admitted[1].load(Ordering::Relaxed));
    let total = TASKS * CALLS_PER_TASK * 2;
    assert_eq!(a1 + a2 + busy.load(Ordering::Relaxed), total);
    assert!(peak.load(Ordering::SeqCst) <= K, "{} calls up at once, {K} channels", peak.load(Ordering::SeqCst));
    assert!(reads > 10 && max_sum <= i64::from(K), "Σ granted reached {max_sum} over {reads} reads");
    assert!(a1 > 100 && a2 > 100, "both nodes admit: {a1} and {a2} of {total}");
    assert_eq!(up.load(Ordering::SeqCst), 0);
    assert_eq!((nodes[0].in_use("p"), nodes[1].in_use("p")), (0, 0));
    // Every row covers its node's local allowance, once the grants and
    // returns the last calls started have landed.
    settle().await;
    for (n, node) in nodes.iter().enumerate() {
        let id = format!("n{}", n + 1);
        let local = node.allowance("p").unwrap_or(u32::MAX);
        let row = granted(&store, "p", now).await.into_iter().find(|(node, _)| *node == id).map_or(0, |(_, g)| g);
        assert!(i64::from(local) <= row, "{id}: local {local} over its row {row}");
    }
    stop.cancel();
}

/// K = 10, two nodes. Node A takes 7 (holding spare beyond them, as its
/// batches give), node B then takes 3: B finds A's spare in the way, asks
/// A for it and gets it back, and all ten are admitted. The eleventh is
/// refused on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_channels_split_seven_and_three_are_all_admitted_and_no_eleventh() {
    let (store, stop, a, b) = two_nodes().await;
    settle().await;
    let now = t(T0);
    for i in 1..=7 {
        assert_eq!(take(&a, 10, now).await, LeaseOutcome::Admitted { active_after: i }, "A's call {i}");
    }
    // Its last batch (asked in the background as the room ran low) lands.
    let held = wait_granted(&store, now, |h| h.iter().any(|(n, g)| n == "a" && *g > 7)).await;
    assert!(held.iter().any(|(n, g)| n == "a" && *g > 7), "A holds spare beyond its 7 calls: {held:?}");
    for i in 1..=3 {
        assert_eq!(take(&b, 10, now).await, LeaseOutcome::Admitted { active_after: i }, "B's call {i}");
    }
    assert!(!take(&a, 10, now).await.is_admitted(), "an eleventh call on A");
    assert!(!take(&b, 10, now).await.is_admitted(), "an eleventh call on B");
    let held = granted(&store, "p", now).await;
    assert_eq!(held, vec![("a".to_owned(), 7), ("b".to_owned(), 3)]);
    // One of A's calls ends: near the limit its channel goes back to the
    // database at once (behind the call's end), for B to take.
    a.release("p");
    let held = wait_granted(&store, now, |h| h.contains(&("a".to_owned(), 6))).await;
    assert_eq!(held, vec![("a".to_owned(), 6), ("b".to_owned(), 3)]);
    assert_eq!(take(&b, 10, now).await, LeaseOutcome::Admitted { active_after: 4 });
    assert_eq!(granted(&store, "p", now).await.iter().map(|(_, g)| g).sum::<i64>(), 10);
    stop.cancel();
}

/// Node A holds 4 of 4 channels and dies (no release, no renewal). Node B
/// gets none of them while A's allowance lives, 59 s on, and all four once
/// it has expired, and not a fifth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_nodes_channels_come_back_when_its_allowance_expires_not_before() {
    let url = common::pg_schema_url().await;
    let store = open(&url).await;
    portal(&store, "p").await;
    let stop = CancellationToken::new();
    let t0 = t(T0);
    {
        let dead_stop = CancellationToken::new();
        let a = node(&url, "a", &dead_stop).await;
        for i in 1..=4 {
            assert_eq!(take(&a, 4, t0).await, LeaseOutcome::Admitted { active_after: i });
        }
        // Killed: its listener gone, nothing given back.
        dead_stop.cancel();
    }
    let b = node(&url, "b", &stop).await;
    settle().await;
    assert_eq!(take(&b, 4, t0 + Duration::seconds(1)).await, LeaseOutcome::Busy { active: 4 });
    assert_eq!(take(&b, 4, t0 + Duration::seconds(59)).await, LeaseOutcome::Busy { active: 4 });
    let later = t0 + Duration::seconds(60);
    for i in 1..=4 {
        assert_eq!(take(&b, 4, later).await, LeaseOutcome::Admitted { active_after: i });
    }
    assert!(!take(&b, 4, later).await.is_admitted());
    assert_eq!(granted(&store, "p", later).await, vec![("b".to_owned(), 4)]);
    stop.cancel();
}

/// A renewed allowance lives on past the first TTL (node B stays refused);
/// an allowance the node let expire is asked for again before its next
/// call, not used as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_keeps_an_allowance_and_an_expired_one_is_asked_again() {
    let (store, stop, a, b) = two_nodes().await;
    let t0 = t(T0);
    assert!(take(&a, 2, t0).await.is_admitted());
    assert!(take(&a, 2, t0).await.is_admitted());
    a.renew(t0 + Duration::seconds(40), t0 + Duration::seconds(100)).await.expect("renew");
    assert_eq!(take(&b, 2, t0 + Duration::seconds(70)).await, LeaseOutcome::Busy { active: 2 });
    // Both of A's calls end; its allowance (2) expires unrenewed at 100.
    a.release("p");
    a.release("p");
    let late = t0 + Duration::seconds(101);
    assert_eq!(granted(&store, "p", late).await, vec![]);
    assert_eq!(take(&b, 2, late).await, LeaseOutcome::Admitted { active_after: 1 });
    // A must not use its expired allowance of 2: it asks, and gets what B
    // left (one).
    assert_eq!(take(&a, 2, late).await, LeaseOutcome::Admitted { active_after: 1 });
    assert!(!take(&a, 2, late).await.is_admitted());
    stop.cancel();
}

/// The grant itself, straight on the store: concurrent grants of one portal
/// from eight nodes never sum past the channels, and each writes what
/// `grant_size` gives for what the others held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_never_sum_past_the_channels() {
    let url = common::pg_schema_url().await;
    let store = open(&url).await;
    portal(&store, "p").await;
    let now = t(T0);
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for n in 0..8 {
        let (store, barrier) = (open(&url).await, barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let node = format!("n{n}");
            let req = GrantRequest { portal: "p", node_id: &node, channels: 20, used: 1, floor: 0, now, ttl: TTL };
            store.allowance_grant(&req).await.expect("grant")
        }));
    }
    let mut sum = 0;
    for task in tasks {
        let g = task.await.expect("task");
        let (want, _) = trunkgate::store::grant_size(20, g.others, g.other_nodes, 1, 0);
        assert_eq!(g.granted, want, "{g:?}");
        sum += g.granted;
    }
    let rows: i64 = granted(&store, "p", now).await.iter().map(|(_, g)| g).sum();
    assert_eq!(i64::from(sum), rows);
    assert!(rows <= 20, "Σ granted {rows} > 20");
    // Lowering never raises, and zero removes the row.
    let before = granted(&store, "p", now).await;
    let (big, held) = before.iter().find(|(_, g)| *g >= 2).cloned().expect("the first grant is a batch");
    let other = before.iter().find(|(n, _)| *n != big).map(|(n, _)| n.clone()).expect("two nodes hold some");
    store.allowance_lower("p", &big, 50).await.expect("lower");
    store.allowance_lower("p", &other, 0).await.expect("lower");
    let after = granted(&store, "p", now).await;
    assert!(after.contains(&(big.clone(), held)), "raised by a lowering: {after:?}");
    assert!(!after.iter().any(|(n, _)| *n == other), "{after:?}");
    store.allowance_lower("p", &big, 1).await.expect("lower");
    assert!(granted(&store, "p", now).await.contains(&(big, 1)));
}
