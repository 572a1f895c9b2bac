//! The store against real databases: every test runs on a SQLite file and on
//! a PostgreSQL schema, through the same code. The licence rules are checked
//! here end to end (written by the store, read back as a snapshot, decided at
//! the edge instants) on both backends.

mod common;

use chrono::{DateTime, Duration, Utc};
use trunkgate::admission::{self, CallRequest, Counters, PortalId, Reason, UserInfo};
use trunkgate::config::DatabaseConfig;
use trunkgate::store::{LicenceRow, NewPortal, PlanChange, PortalSettings, Store, StoreError};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
}

const T0: &str = "2026-03-01T00:00:00Z";
const S: Duration = Duration::seconds(1);

/// Runs each scenario on SQLite and PostgreSQL.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_guard, url) = crate::common::sqlite_url();
                    let store = crate::open(&url).await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let url = crate::common::pg_schema_url().await;
                    let store = crate::open(&url).await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

/// Like `both!`, for scenarios that need the URL too.
macro_rules! both_url {
    ($($name:ident),* $(,)?) => {
        mod sqlite_url {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_guard, url) = crate::common::sqlite_url();
                    let store = crate::open(&url).await;
                    super::$name(store, url).await;
                }
            )*
        }
        mod postgres_url {
            $(
                #[tokio::test]
                async fn $name() {
                    let url = crate::common::pg_schema_url().await;
                    let store = crate::open(&url).await;
                    super::$name(store, url).await;
                }
            )*
        }
    };
}

async fn open(url: &str) -> Store {
    Store::connect(url, &DatabaseConfig::default()).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

fn free() -> LicenceRow {
    LicenceRow { plan: "free".into(), valid_from: None, valid_until: None, on_expiry: "block".into(), grace_days: 15 }
}

fn paid(plan: &str, from: DateTime<Utc>, until: DateTime<Utc>, on_expiry: &str, grace: i64) -> LicenceRow {
    LicenceRow {
        plan: plan.into(),
        valid_from: Some(from.timestamp()),
        valid_until: Some(until.timestamp()),
        on_expiry: on_expiry.into(),
        grace_days: grace,
    }
}

async fn add(store: &Store, id: &str, domain: &str, licence: LicenceRow, now: DateTime<Utc>) {
    store
        .portal_add(&NewPortal { id: id.into(), domain: domain.into(), licence }, now)
        .await
        .unwrap_or_else(|e| panic!("add {id}: {e}"));
}

async fn decide(store: &Store, id: &str, active: u32, now: DateTime<Utc>) -> admission::Decision {
    let snap = store.portal_snapshot(id).await.expect("snapshot");
    let req = CallRequest { portal: PortalId::new(id), node_overloaded: false };
    admission::decide(&req, snap.as_ref(), &Counters { active_calls: active, calls_this_second: 0 }, now)
}

async fn reason(store: &Store, id: &str, now: DateTime<Utc>) -> Option<Reason> {
    decide(store, id, 0, now).await.reason()
}

both!(
    migrations_are_idempotent_and_seed_plans,
    paid_licence_with_extension_edges,
    grace_and_expiry_policies,
    demo_without_extension_and_its_end,
    extensions_stack_and_channels_fill,
    status_lifecycle_and_domain_reuse,
    refused_writes_leave_nothing,
    plan_limits_change_without_restart,
    free_inactivity_and_activity,
    users_store_only_ha1,
    settings_and_rate_limit,
    call_records_round_trip,
    one_node_registers_a_trunk_until_its_claim_expires,
    user_outbound_settings,
    lease_batches_land_as_their_final_state,
);

both_url!(licence_cache_follows_changes);

async fn migrations_are_idempotent_and_seed_plans(store: Store) {
    let plans = store.plans().await.expect("plans");
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["demo", "free"]);
    let demo = &plans[0];
    assert!(demo.included_channels > 0, "demo includes the SIP connector");
    assert_eq!(plans[1].included_channels, 0, "free includes no channels");
    // Re-running the migrator on the same database is a no-op.
    let v0 = store.change_version().await.expect("version");
    store.plan_set("free", &PlanChange::default(), t(T0)).await.expect("no-op change");
    assert_eq!(store.change_version().await.expect("version"), v0 + 1, "every write bumps the change counter");
}

async fn paid_licence_with_extension_edges(store: Store) {
    let t0 = t(T0);
    let end = t0 + Duration::days(365);
    store.plan_set("pro", &PlanChange { max_users: Some(Some(100)), ..Default::default() }, t0).await.expect("plan");
    add(&store, "acme", "acme.example.com", paid("pro", t0, end, "block", 15), t0).await;
    // Paid licence alone grants no connector.
    assert_eq!(reason(&store, "acme", t0).await, Some(Reason::NotLicensed));
    let ext_from = t0 + Duration::days(10);
    let ext_until = t0 + Duration::days(40);
    store.extension_add("acme", 2, ext_from, ext_until, t0).await.expect("extension");
    assert_eq!(reason(&store, "acme", ext_from - S).await, Some(Reason::NotLicensed), "not started yet");
    assert_eq!(reason(&store, "acme", ext_from).await, None, "starts exactly at valid_from");
    assert_eq!(reason(&store, "acme", ext_from + S).await, None);
    assert_eq!(reason(&store, "acme", ext_until - S).await, None);
    assert_eq!(reason(&store, "acme", ext_until).await, Some(Reason::NotLicensed), "ended exactly at valid_until");
    assert_eq!(reason(&store, "acme", ext_until + S).await, Some(Reason::NotLicensed));
    match decide(&store, "acme", 0, ext_from).await {
        admission::Decision::Admit { channels, .. } => assert_eq!(channels, 2),
        other => panic!("expected admit, got {other}"),
    }
}

async fn grace_and_expiry_policies(store: Store) {
    let t0 = t(T0);
    let end = t0 + Duration::days(30);
    store.plan_set("pro", &PlanChange::default(), t0).await.expect("plan");
    add(&store, "blk", "blk.example.com", paid("pro", t0, end, "block", 15), t0).await;
    add(&store, "dwn", "dwn.example.com", paid("pro", t0, end, "downgrade_free", 15), t0).await;
    for id in ["blk", "dwn"] {
        store.extension_add(id, 1, t0, end + Duration::days(100), t0).await.expect("ext");
    }
    let grace_end = end + Duration::days(15);
    // Expired 14 days ago: in grace, admitted.
    assert_eq!(reason(&store, "blk", end + Duration::days(14)).await, None);
    assert_eq!(reason(&store, "blk", grace_end - S).await, None);
    assert_eq!(reason(&store, "blk", grace_end).await, Some(Reason::LicenceExpired));
    assert_eq!(reason(&store, "blk", end + Duration::days(16)).await, Some(Reason::LicenceExpired));
    // downgrade_free: free plan applies; the extension still licenses calls.
    assert_eq!(reason(&store, "dwn", grace_end + S).await, None);
    let d = decide(&store, "dwn", 0, grace_end + S).await;
    match d {
        admission::Decision::Admit { effective_plan, .. } => assert_eq!(effective_plan.as_str(), "free"),
        other => panic!("expected admit on free, got {other}"),
    }
    // A shorter grace per portal.
    store.licence_set("blk", &paid("pro", t0, end, "block", 3), t0).await.expect("licence");
    assert_eq!(reason(&store, "blk", end + Duration::days(3) - S).await, None);
    assert_eq!(reason(&store, "blk", end + Duration::days(3)).await, Some(Reason::LicenceExpired));
    // Grace over 15 days is refused at write time, and nothing changes.
    let err = store.licence_set("blk", &paid("pro", t0, end, "block", 16), t0).await.expect_err("16 days");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert_eq!(store.licence("blk").await.expect("licence").expect("row").grace_days, 3);
}

async fn demo_without_extension_and_its_end(store: Store) {
    let t0 = t(T0);
    let end = t0 + Duration::days(14);
    add(&store, "demo", "demo.example.com", paid("demo", t0, end, "block", 15), t0).await;
    assert_eq!(reason(&store, "demo", t0).await, None, "demo includes the connector");
    assert_eq!(reason(&store, "demo", end - S).await, None);
    assert_eq!(reason(&store, "demo", end).await, Some(Reason::LicenceExpired), "demo has no grace");
    add(&store, "demo2", "demo2.example.com", paid("demo", t0, end, "downgrade_free", 15), t0).await;
    assert_eq!(reason(&store, "demo2", end).await, Some(Reason::NotLicensed), "downgraded to free, no extension");
}

async fn extensions_stack_and_channels_fill(store: Store) {
    let t0 = t(T0);
    add(&store, "s", "s.example.com", free(), t0).await;
    let a_until = t0 + Duration::days(10);
    store.extension_add("s", 2, t0, a_until, t0).await.expect("a");
    store.extension_add("s", 3, t0 + Duration::days(5), t0 + Duration::days(20), t0).await.expect("b");
    let channels = |d: admission::Decision| match d {
        admission::Decision::Admit { channels, .. } => channels,
        other => panic!("expected admit, got {other}"),
    };
    assert_eq!(channels(decide(&store, "s", 0, t0).await), 2);
    assert_eq!(channels(decide(&store, "s", 0, t0 + Duration::days(5)).await), 5, "overlap stacks");
    assert_eq!(channels(decide(&store, "s", 0, a_until).await), 3, "first ended");
    // Channels: N busy refuses, N-1 admits.
    assert_eq!(decide(&store, "s", 4, t0 + Duration::days(6)).await.reason(), None);
    assert_eq!(decide(&store, "s", 5, t0 + Duration::days(6)).await.reason(), Some(Reason::ChannelsBusy));
    assert_eq!(store.extensions("s").await.expect("list").len(), 2);
}

async fn status_lifecycle_and_domain_reuse(store: Store) {
    let t0 = t(T0);
    add(&store, "old", "shared.example.com", free(), t0).await;
    store.extension_add("old", 1, t0, t0 + Duration::days(100), t0).await.expect("ext");
    assert_eq!(reason(&store, "old", t0).await, None);
    store.portal_block("old", admission::BlockReason::Violation, t0).await.expect("block");
    assert_eq!(reason(&store, "old", t0).await, Some(Reason::PortalBlocked));
    store.portal_unblock("old", t0).await.expect("unblock");
    assert_eq!(reason(&store, "old", t0).await, None);
    // The domain is taken while the portal lives, even while deleting.
    store.portal_delete("old", t0).await.expect("delete");
    assert_eq!(reason(&store, "old", t0).await, Some(Reason::PortalDeleted));
    let e = store
        .portal_add(&NewPortal { id: "new".into(), domain: "SHARED.example.com".into(), licence: free() }, t0)
        .await
        .expect_err("domain still taken");
    assert!(matches!(e, StoreError::Conflict { what: "domain", .. }), "{e}");
    store.portal_purge("old", t0).await.expect("purge");
    add(&store, "new", "shared.example.com", free(), t0).await;
    store.extension_add("new", 1, t0, t0 + Duration::days(100), t0).await.expect("ext");
    assert_eq!(reason(&store, "new", t0).await, None);
    assert_eq!(reason(&store, "old", t0).await, Some(Reason::PortalDeleted), "old id never reaches the new owner");
    assert_eq!(store.portal_by_domain("shared.example.com").await.expect("q").expect("row").id, "new");
    // Ids are never reused; illegal transitions are refused.
    let e = store
        .portal_add(&NewPortal { id: "old".into(), domain: "other.example.com".into(), licence: free() }, t0)
        .await
        .expect_err("id reuse");
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    assert!(store.portal_unblock("new", t0).await.is_err(), "not blocked");
    assert!(store.portal_purge("new", t0).await.is_err(), "purge before delete");
    assert!(store.portal_block("old", admission::BlockReason::Manual, t0).await.is_err(), "deleted");
    assert_eq!(reason(&store, "missing", t0).await, Some(Reason::PortalNotFound));
}

async fn refused_writes_leave_nothing(store: Store) {
    let t0 = t(T0);
    // Unknown plan: no portal row is left behind.
    let e = store
        .portal_add(
            &NewPortal {
                id: "x".into(),
                domain: "x.example.com".into(),
                licence: paid("gold", t0, t0 + Duration::days(1), "block", 15),
            },
            t0,
        )
        .await
        .expect_err("unknown plan");
    assert!(matches!(e, StoreError::NotFound { what: "plan", .. }), "{e}");
    assert!(store.portal("x").await.expect("q").is_none());
    // Invalid licence (grace 16) is refused before any write.
    let e = store
        .portal_add(
            &NewPortal { id: "x".into(), domain: "x.example.com".into(), licence: paid("demo", t0, t0, "block", 16) },
            t0,
        )
        .await
        .expect_err("invalid");
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    assert!(store.portal("x").await.expect("q").is_none());
    for bad in ["", "a..b", "-a.com", "a_b.com", "a b"] {
        assert!(
            store.portal_add(&NewPortal { id: "y".into(), domain: bad.into(), licence: free() }, t0).await.is_err(),
            "domain `{bad}`"
        );
    }
    assert!(store.extension_add("nope", 1, t0, t0 + S, t0).await.is_err());
    add(&store, "x", "x.example.com", free(), t0).await;
    assert!(store.extension_add("x", 0, t0, t0 + S, t0).await.is_err(), "zero channels");
    assert!(store.extension_add("x", 1, t0, t0, t0).await.is_err(), "empty window");
    assert!(store.extensions("x").await.expect("list").is_empty());
}

async fn plan_limits_change_without_restart(store: Store) {
    let t0 = t(T0);
    add(&store, "p", "p.example.com", free(), t0).await;
    let user = UserInfo { extranet: false, disabled: false };
    let snap = store.portal_snapshot("p").await.expect("q").expect("portal");
    assert_eq!(snap.limits.free.max_users, Some(5));
    assert!(admission::may_register(&snap, &user, 4, t0).is_ok());
    assert!(admission::may_register(&snap, &user, 5, t0).is_err());
    store.plan_set("free", &PlanChange { max_users: Some(Some(6)), ..Default::default() }, t0).await.expect("set");
    let snap = store.portal_snapshot("p").await.expect("q").expect("portal");
    assert!(admission::may_register(&snap, &user, 5, t0).is_ok(), "new limit read from the database");
    store.plan_set("free", &PlanChange { max_users: Some(None), ..Default::default() }, t0).await.expect("unlimited");
    let snap = store.portal_snapshot("p").await.expect("q").expect("portal");
    assert_eq!(snap.limits.free.max_users, None);
    assert!(store.plan_set("Bad Name", &PlanChange::default(), t0).await.is_err());
}

async fn free_inactivity_and_activity(store: Store) {
    let t0 = t(T0);
    add(&store, "f", "f.example.com", free(), t0).await;
    store.extension_add("f", 1, t0, t0 + Duration::days(365), t0).await.expect("ext");
    let d50 = t0 + Duration::days(50);
    assert_eq!(reason(&store, "f", d50 - S).await, None);
    assert_eq!(reason(&store, "f", d50).await, Some(Reason::PortalBlocked), "50 days without activity");
    store.portal_touch("f", t0 + Duration::days(10)).await.expect("touch");
    assert_eq!(reason(&store, "f", d50).await, None, "activity resets the count");
    assert_eq!(reason(&store, "f", d50 + Duration::days(10)).await, Some(Reason::PortalBlocked));
    // Touch never moves activity backwards.
    store.portal_touch("f", t0).await.expect("touch");
    assert_eq!(reason(&store, "f", d50).await, None);
}

async fn users_store_only_ha1(store: Store) {
    let t0 = t(T0);
    add(&store, "u", "u.example.com", free(), t0).await;
    store.user_add("u", "alice", "s3cret-pass-1", false, t0).await.expect("user");
    let e = store.user_add("u", "alice", "s3cret-pass-2", false, t0).await.expect_err("dup");
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    assert!(matches!(store.user_add("u", "bob", "short", false, t0).await, Err(StoreError::Credential(_))));
    assert!(matches!(store.user_add("u", "b@b", "long-enough-1", false, t0).await, Err(StoreError::Credential(_))));
    let row = store.user("u", "alice").await.expect("q").expect("row");
    assert_eq!(row.realm, "u.example.com");
    let expected = trunkgate::credentials::Ha1::compute("alice", "u.example.com", "s3cret-pass-1");
    assert_eq!(row.ha1_md5, expected.md5);
    assert_eq!(row.ha1_sha256, expected.sha256);
    let json = serde_json::to_string(&row).expect("json");
    assert!(!json.contains(&expected.md5), "HA1 never printed");
    store.user_set_disabled("u", "alice", true).await.expect("disable");
    assert!(store.user("u", "alice").await.expect("q").expect("row").disabled);
    assert!(store.user_set_disabled("u", "nobody", true).await.is_err());
    // Purge erases credentials.
    store.portal_delete("u", t0).await.expect("delete");
    store.portal_purge("u", t0).await.expect("purge");
    assert!(store.users("u").await.expect("q").is_empty());
}

async fn settings_and_rate_limit(store: Store) {
    let t0 = t(T0);
    add(&store, "r", "r.example.com", free(), t0).await;
    store.extension_add("r", 10, t0, t0 + Duration::days(1), t0).await.expect("ext");
    let row = store
        .portal_configure(
            "r",
            &PortalSettings { max_cps_override: Some(Some(2)), allow_extranet_calls: Some(true), ..Default::default() },
        )
        .await
        .expect("set");
    assert!(row.allow_extranet_calls);
    let snap = store.portal_snapshot("r").await.expect("q").expect("portal");
    let req = CallRequest { portal: PortalId::new("r"), node_overloaded: false };
    let at = |n| admission::decide(&req, Some(&snap), &Counters { active_calls: 0, calls_this_second: n }, t0).reason();
    assert_eq!(at(1), None);
    assert_eq!(at(2), Some(Reason::RateLimited));
    assert!(admission::may_target(&snap, &UserInfo { extranet: true, disabled: false }));
    assert!(
        store
            .portal_configure("r", &PortalSettings { max_call_duration_s: Some(0), ..Default::default() })
            .await
            .is_err()
    );
}

async fn call_records_round_trip(store: Store) {
    let rec = |id: &str, portal: &str, at: i64| trunkgate::store::CallRecord {
        id: 0,
        call_id: id.into(),
        node_id: "n1".into(),
        portal_id: Some(portal.into()),
        trunk: Some("t".into()),
        direction: "inbound".into(),
        caller: Some("+15550100".into()),
        callee: Some("+15550001".into()),
        target_user: None,
        started_at: at,
        answered_at: None,
        ended_at: Some(at),
        outcome: "refused".into(),
        sip_status: Some(486),
        reason: Some("channels-busy".into()),
        media: None,
    };
    store.call_records_insert(&[rec("a", "p1", 100), rec("b", "p2", 200), rec("c", "p1", 300)]).await.expect("insert");
    let all = store.call_records(None, None, 10).await.expect("q");
    assert_eq!(all.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>(), ["c", "b", "a"]);
    let p1 = store.call_records(Some("p1"), None, 10).await.expect("q");
    assert_eq!(p1.len(), 2);
    let since = store.call_records(Some("p1"), DateTime::from_timestamp(200, 0), 10).await.expect("q");
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].reason.as_deref(), Some("channels-busy"));
    // A batch larger than one statement's rows (it goes as 256 + 32 + 8 +
    // 4): every record written, once, with its own fields.
    let batch: Vec<_> = (0..300).map(|i| rec(&format!("big-{i}"), "p3", 1_000 + i)).collect();
    store.call_records_insert(&batch).await.expect("insert 300");
    let big = store.call_records(Some("p3"), None, 1_000).await.expect("q");
    assert_eq!(big.len(), 300);
    let mut seen: Vec<(String, i64)> = big.into_iter().map(|r| (r.call_id, r.started_at)).collect();
    seen.sort_by_key(|(_, at)| *at);
    let want: Vec<(String, i64)> = (0..300).map(|i| (format!("big-{i}"), 1_000 + i)).collect();
    assert_eq!(seen, want);
}

/// The cache reflects a block (and a new portal) after a refresh; with the
/// refresher running, a change reaches it without anyone asking: by NOTIFY
/// on PostgreSQL (the poll interval here is an hour, so only NOTIFY can do
/// it) and by polling on SQLite.
async fn licence_cache_follows_changes(store: Store, url: String) {
    use trunkgate::licences::LicenceCache;
    let t0 = t(T0);
    add(&store, "c", "c.example.com", free(), t0).await;
    let cache = LicenceCache::load(&store).await.expect("load");
    assert_eq!(cache.get().portal_by_domain("C.example.com").map(|p| p.id.as_str().to_owned()), Some("c".into()));
    assert!(!cache.refresh(&store).await.expect("refresh"), "nothing changed");
    store.portal_block("c", admission::BlockReason::Manual, t0).await.expect("block");
    assert!(cache.refresh(&store).await.expect("refresh"));
    let snap = cache.get();
    let p = snap.portal(&PortalId::new("c")).expect("portal");
    assert_eq!(p.status, admission::PortalStatus::Blocked(admission::BlockReason::Manual));

    let poll = if store.kind() == trunkgate::store::BackendKind::Postgres {
        std::time::Duration::from_secs(3600)
    } else {
        std::time::Duration::from_millis(100)
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut changes = cache.subscribe();
    let task = tokio::spawn(cache.clone().run_refresher(store.clone(), url, poll, shutdown.clone()));
    changes.borrow_and_update();
    // LISTEN is registered asynchronously: repeat a harmless change until
    // the refresher reports one.
    let mut probe = 0;
    loop {
        probe += 1;
        store.plan_set("free", &PlanChange::default(), t0).await.expect("probe change");
        if tokio::time::timeout(std::time::Duration::from_millis(500), changes.changed()).await.is_ok() {
            break;
        }
        assert!(probe < 20, "refresher never saw a change");
    }
    store.portal_unblock("c", t0).await.expect("unblock");
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            changes.changed().await.expect("watch");
            if cache.get().portal(&PortalId::new("c")).map(|p| p.status) == Some(admission::PortalStatus::Active) {
                break;
            }
        }
    })
    .await
    .expect("unblock reaches the cache within 5 s");
    shutdown.cancel();
    task.await.expect("refresher ends");
}

/// A cloud-PBX trunk's registration belongs to one node at a time: the
/// first claim wins, the holder renews, another node gets it only once the
/// claim has run out (the holder died) or been released — and of several
/// nodes racing for a free claim exactly one wins.
async fn one_node_registers_a_trunk_until_its_claim_expires(store: Store) {
    assert!(store.claim_registration("cloud", "a", 100, 130).await.expect("claim"));
    assert!(!store.claim_registration("cloud", "b", 110, 140).await.expect("claim"), "a holds it");
    assert!(store.claim_registration("cloud", "a", 120, 150).await.expect("renew"), "the holder renews");
    assert!(!store.claim_registration("cloud", "b", 149, 179).await.expect("claim"), "not before it runs out");
    store.set_registration_state("cloud", "a", "registered", Some("expires 3600 s"), 121).await.expect("state");
    store.set_registration_state("cloud", "b", "failed", None, 122).await.expect("not b's: no effect");
    let rows = store.registrations().await.expect("rows");
    assert_eq!((rows.len(), rows[0].node_id.as_str(), rows[0].state.as_str()), (1, "a", "registered"));
    assert!(store.claim_registration("cloud", "b", 150, 180).await.expect("claim"), "a stopped renewing");
    assert!(!store.claim_registration("cloud", "a", 151, 181).await.expect("claim"), "a lost it");
    store.release_registration("cloud", "b").await.expect("release");
    // Released: free at once. Eight nodes race; one wins.
    let mut racers = Vec::new();
    for n in 0..8 {
        let s = store.clone();
        racers.push(tokio::spawn(async move { s.claim_registration("cloud", &format!("n{n}"), 160, 190).await }));
    }
    let mut wins = 0;
    for r in racers {
        if r.await.expect("join").expect("claim") {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "exactly one node registers the trunk");
    // Health rows: one per (trunk, node), updated in place.
    store.set_trunk_health("cloud", "a", false, 170, Some("no answer"), 171).await.expect("health");
    store.set_trunk_health("cloud", "a", true, 180, Some("200 OK"), 181).await.expect("health");
    store.set_trunk_health("cloud", "b", true, 100, None, 181).await.expect("health");
    let h = store.trunk_health().await.expect("rows");
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].node_id.as_str(), h[0].up, h[0].since, h[0].detail.as_deref()), ("a", 1, 180, Some("200 OK")));
}

/// What a user may dial out, and the number they present, are kept and
/// validated.
async fn user_outbound_settings(store: Store) {
    add(&store, "p1", "p1.example.com", free(), t(T0)).await;
    store.user_add("p1", "alice", "alice-secret-1", false, t(T0)).await.expect("user");
    let u = store.user("p1", "alice").await.expect("read").expect("exists");
    assert_eq!((u.outbound.as_str(), u.outbound_number.as_deref()), ("any", None), "defaults");
    store.user_set_outbound("p1", "alice", Some("+44*,112"), Some(Some("+15550100"))).await.expect("set");
    let u = store.user("p1", "alice").await.expect("read").expect("exists");
    assert_eq!((u.outbound.as_str(), u.outbound_number.as_deref()), ("+44*,112", Some("+15550100")));
    store.user_set_outbound("p1", "alice", None, Some(None)).await.expect("clear number only");
    let u = store.user("p1", "alice").await.expect("read").expect("exists");
    assert_eq!((u.outbound.as_str(), u.outbound_number.as_deref()), ("+44*,112", None));
    assert!(matches!(
        store.user_set_outbound("p1", "alice", Some("+44x"), None).await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.user_set_outbound("p1", "alice", None, Some(Some("12ab"))).await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.user_set_outbound("p1", "nobody", Some("none"), None).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// The node's write-behind lease batches (multi-row statements): each
/// lease ends as its last change left it, also across batches, and the
/// portal's activity is its latest take.
async fn lease_batches_land_as_their_final_state(store: Store) {
    use trunkgate::store::LeaseOp;
    let t0 = t(T0);
    add(&store, "p", "p.example.com", free(), t0).await;
    let at = t0.timestamp();
    let take = |id: &str, s: i64| LeaseOp::Take {
        call_id: id.into(),
        portal: "p".into(),
        node_id: "n1".into(),
        acquired_at: at + s,
        expires_at: at + s + 60,
    };
    let release = |id: &str| LeaseOp::Release { call_id: id.into() };
    let media = |id: &str, m: &str| LeaseOp::Media { call_id: id.into(), media: m.into() };
    // 600 calls (more than one statement's rows), every third ended within
    // the batch; "m" gets media after its take.
    let mut first: Vec<LeaseOp> = (0..600).map(|i| take(&format!("c{i}"), 0)).collect();
    first.extend((0..600).step_by(3).map(|i| release(&format!("c{i}"))));
    first.extend([take("m", 1), media("m", "{\"a\":1}")]);
    store.apply_lease_ops(&first).await.expect("first batch");
    // The next batch ends calls of the first, updates media of one of them
    // and takes one again.
    let second = vec![release("c1"), media("c2", "{\"b\":2}"), release("m"), take("c0", 2)];
    store.apply_lease_ops(&second).await.expect("second batch");

    let mut held: Vec<(String, Option<String>)> =
        store.calls_in_progress(None, t0).await.expect("leases").into_iter().map(|l| (l.call_id, l.media)).collect();
    held.sort();
    let mut want: Vec<(String, Option<String>)> = (0..600)
        .filter(|i| (i % 3 != 0 || *i == 0) && *i != 1)
        .map(|i| (format!("c{i}"), (i == 2).then(|| "{\"b\":2}".to_owned())))
        .collect();
    want.sort();
    assert_eq!(held.len(), 600 - 200 + 1 - 1, "c0 back, c1 gone");
    assert_eq!(held, want);
    let portal = store.portal("p").await.expect("q").expect("portal");
    assert_eq!(portal.last_activity_at, Some(at + 2), "the latest take");
}
