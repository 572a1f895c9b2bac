use super::*;
use crate::transport::Transport;

const NOW: u64 = 1_780_000_000;

fn aor(user: &str) -> Aor {
    Aor { portal: PortalId::new("acme"), user: user.into() }
}

fn src() -> Source {
    Source { transport: Transport::Udp, addr: "192.0.2.50:5060".parse().expect("addr") }
}

fn contact(uri: &str, expires: Option<u64>) -> ContactSpec {
    ContactSpec { uri: uri.into(), expires, q: None }
}

fn req<'a>(
    action: &'a RegisterAction,
    header_expires: Option<u64>,
    call_id: &'a str,
    cseq: u32,
) -> RegisterRequest<'a> {
    RegisterRequest { action, header_expires, call_id, cseq, source: src() }
}

fn update(v: Vec<ContactSpec>) -> RegisterAction {
    RegisterAction::Update(v)
}

#[test]
fn register_refresh_and_expire_at_the_edge() {
    let mut l = Location::new(RegistrarConfig::default());
    let a = aor("alice");
    let b =
        l.apply(&a, &req(&update(vec![contact("sip:alice@192.0.2.50", None)]), Some(120), "c1", 1), NOW).expect("ok");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].remaining(NOW), 120);
    assert_eq!(l.lookup(&a, NOW + 119).len(), 1, "one second before expiry");
    assert!(l.lookup(&a, NOW + 120).is_empty(), "expired exactly at expires");
    // Refresh with a higher CSeq extends it.
    l.apply(&a, &req(&update(vec![contact("sip:alice@192.0.2.50", Some(300))]), None, "c1", 2), NOW + 100).expect("ok");
    assert_eq!(l.lookup(&a, NOW + 399).len(), 1);
    assert_eq!(l.expire(NOW + 400), 1);
    assert!(l.is_empty());
}

#[test]
fn expires_rules_min_max_default() {
    let mut l = Location::new(RegistrarConfig::default());
    let a = aor("alice");
    let e = l.apply(&a, &req(&update(vec![contact("sip:a@h", Some(59))]), None, "c", 1), NOW);
    assert_eq!(e, Err(RegisterError::IntervalTooBrief { min_expires: 60 }));
    assert!(l.lookup(&a, NOW).is_empty(), "refused request changed nothing");
    let b = l.apply(&a, &req(&update(vec![contact("sip:a@h", Some(60))]), None, "c", 2), NOW).expect("60 ok");
    assert_eq!(b[0].remaining(NOW), 60);
    let b = l.apply(&a, &req(&update(vec![contact("sip:a@h", Some(100_000))]), None, "c", 3), NOW).expect("ok");
    assert_eq!(b[0].remaining(NOW), 3600, "clamped to max");
    let b = l.apply(&aor("bob"), &req(&update(vec![contact("sip:b@h", None)]), None, "c", 1), NOW).expect("ok");
    assert_eq!(b[0].remaining(NOW), 3600, "default");
    // Header Expires applies when the contact has none; the param wins.
    let b = l.apply(&aor("carol"), &req(&update(vec![contact("sip:c@h", None)]), Some(90), "c", 1), NOW).expect("ok");
    assert_eq!(b[0].remaining(NOW), 90);
}

#[test]
fn multiple_contacts_and_removal_by_zero() {
    let mut l = Location::new(RegistrarConfig::default());
    let a = aor("alice");
    let two = update(vec![
        contact("sip:a@desk", None),
        ContactSpec { uri: "sip:a@mobile".into(), expires: None, q: Some(0.5) },
    ]);
    let b = l.apply(&a, &req(&two, Some(600), "c", 1), NOW).expect("ok");
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].contact, "sip:a@desk", "q=1 (default) before q=0.5");
    let b = l.apply(&a, &req(&update(vec![contact("sip:a@DESK", Some(0))]), None, "c", 2), NOW).expect("ok");
    assert_eq!(b.len(), 1, "host compared case-insensitively");
    assert_eq!(b[0].contact, "sip:a@mobile");
    // Fetch leaves bindings alone.
    assert_eq!(l.apply(&a, &req(&RegisterAction::Fetch, None, "x", 1), NOW).expect("ok").len(), 1);
}

#[test]
fn wildcard_removes_all_only_with_expires_zero() {
    let mut l = Location::new(RegistrarConfig::default());
    let a = aor("alice");
    l.apply(&a, &req(&update(vec![contact("sip:a@1", None), contact("sip:a@2", None)]), None, "c", 1), NOW)
        .expect("ok");
    assert_eq!(l.apply(&a, &req(&RegisterAction::RemoveAll, Some(10), "d", 1), NOW), Err(RegisterError::BadWildcard));
    assert_eq!(l.apply(&a, &req(&RegisterAction::RemoveAll, None, "d", 1), NOW), Err(RegisterError::BadWildcard));
    assert_eq!(
        l.apply(&a, &req(&update(vec![contact("*", None)]), Some(0), "d", 1), NOW),
        Err(RegisterError::BadWildcard)
    );
    assert_eq!(l.apply(&a, &req(&RegisterAction::RemoveAll, Some(0), "c", 1), NOW), Err(RegisterError::OutOfOrder));
    assert!(l.apply(&a, &req(&RegisterAction::RemoveAll, Some(0), "d", 1), NOW).expect("ok").is_empty());
    assert!(l.is_empty());
}

#[test]
fn out_of_order_cseq_is_refused() {
    let mut l = Location::new(RegistrarConfig::default());
    let a = aor("alice");
    l.apply(&a, &req(&update(vec![contact("sip:a@h", None)]), None, "c", 5), NOW).expect("ok");
    assert_eq!(
        l.apply(&a, &req(&update(vec![contact("sip:a@h", None)]), None, "c", 5), NOW),
        Err(RegisterError::OutOfOrder)
    );
    assert_eq!(
        l.apply(&a, &req(&update(vec![contact("sip:a@h", None)]), None, "c", 4), NOW),
        Err(RegisterError::OutOfOrder)
    );
    // Another Call-ID (a rebooted phone) may replace it with any CSeq.
    assert!(l.apply(&a, &req(&update(vec![contact("sip:a@h", None)]), None, "other", 1), NOW).is_ok());
}

#[test]
fn contact_limit_per_aor() {
    let mut l = Location::new(RegistrarConfig { max_contacts: 2, ..Default::default() });
    let a = aor("alice");
    l.apply(&a, &req(&update(vec![contact("sip:a@1", None), contact("sip:a@2", None)]), None, "c", 1), NOW)
        .expect("ok");
    let e = l.apply(&a, &req(&update(vec![contact("sip:a@3", None)]), None, "c", 2), NOW);
    assert_eq!(e, Err(RegisterError::TooManyContacts { max: 2 }));
    assert_eq!(l.lookup(&a, NOW).len(), 2);
}

#[test]
fn registered_users_counts_users_not_devices() {
    let mut l = Location::new(RegistrarConfig::default());
    let two = update(vec![contact("sip:a@1", None), contact("sip:a@2", None)]);
    l.apply(&aor("alice"), &req(&two, Some(100), "c", 1), NOW).expect("ok");
    l.apply(&aor("bob"), &req(&update(vec![contact("sip:b@1", None)]), Some(200), "c", 1), NOW).expect("ok");
    let other = Aor { portal: PortalId::new("globex"), user: "alice".into() };
    l.apply(&other, &req(&update(vec![contact("sip:x@1", None)]), None, "c", 1), NOW).expect("ok");
    let acme = PortalId::new("acme");
    assert_eq!(l.registered_users(&acme, None, NOW), 2);
    assert_eq!(l.registered_users(&acme, Some("alice"), NOW), 1);
    assert_eq!(l.registered_users(&acme, None, NOW + 100), 1, "alice expired");
    l.remove_portal(&acme);
    assert_eq!(l.registered_users(&acme, None, NOW), 0);
    assert_eq!(l.len(), 1);
}

#[test]
fn a_closed_websocket_takes_only_its_own_bindings() {
    let mut l = Location::new(RegistrarConfig::default());
    let ws = |port| Source { transport: Transport::Wss, addr: SocketAddr::from(([198, 51, 100, 7], port)) };
    let a = aor("alice");
    let r1 = update(vec![contact("sip:x1@a.invalid;transport=ws", None)]);
    let r2 = update(vec![contact("sip:x2@b.invalid;transport=ws", None)]);
    let via = |action, source, call_id| RegisterRequest { action, header_expires: None, call_id, cseq: 1, source };
    l.apply(&a, &via(&r1, ws(40001), "tab1"), NOW).expect("first tab");
    l.apply(&a, &via(&r2, ws(40002), "tab2"), NOW).expect("second tab");
    l.apply(&aor("bob"), &req(&update(vec![contact("sip:bob@192.0.2.50", None)]), None, "b", 1), NOW).expect("bob");
    // Same address, other transport: not the closed connection.
    assert_eq!(l.remove_source(Source { transport: Transport::Tcp, addr: ws(40001).addr }), 0);
    assert_eq!(l.remove_source(ws(40001)), 1);
    let left = l.lookup(&a, NOW);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].contact, "sip:x2@b.invalid;transport=ws");
    assert_eq!(l.lookup(&aor("bob"), NOW).len(), 1, "other users untouched");
    assert_eq!(l.remove_source(ws(40002)), 1);
    assert!(l.lookup(&a, NOW).is_empty());
    assert_eq!(l.len(), 1);
}
