//! The admin commands: each runs in one database transaction, so a refused
//! command writes nothing.

use std::io::BufRead;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::info;

use super::output::{opt, table};
use super::{AdmissionCmd, CdrArgs, Command, ExtensionCmd, LicenceArgs, LicenceCmd, PlanCmd, PortalCmd, UserCmd};
use crate::admission::{self, BlockReason, CallRequest, Counters, ExpiryPolicy, Licence, Plan, PortalId};
use crate::clock;
use crate::config::Loaded;
use crate::store::{
    LicenceRow, NewPortal, PlanChange, PortalSettings, Store, StoreError, format_ts, parse_time, redact_url,
};

/// Why a command failed, which decides the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments (exit 2).
    Usage(String),
    /// The command could not be carried out (exit 1).
    Runtime(anyhow::Error),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { .. } | StoreError::Credential(_) => Failure::Usage(e.to_string()),
            other => Failure::Runtime(other.into()),
        }
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(msg.into())
}

fn time_arg(name: &str, v: &str) -> Result<DateTime<Utc>, Failure> {
    parse_time(v).map_err(|e| usage(format!("--{name}: {e}")))
}

fn opt_time_arg(name: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, Failure> {
    v.map(|v| time_arg(name, v)).transpose()
}

/// `unlimited`/`none` or a number.
fn limit_arg(name: &str, v: &str) -> Result<Option<u32>, Failure> {
    match v {
        "unlimited" | "none" => Ok(None),
        n => n.parse::<u32>().map(Some).map_err(|_| usage(format!("--{name}: `{n}` is not a number or `unlimited`"))),
    }
}

fn licence_from_args(a: &LicenceArgs) -> Result<LicenceRow, Failure> {
    let plan = Plan::from_str(&a.plan).map_err(|e| usage(format!("--plan: {e}")))?;
    let on_expiry = ExpiryPolicy::from_str(&a.on_expiry).map_err(|e| usage(format!("--on-expiry: {e}")))?;
    let licence = Licence {
        plan,
        valid_from: opt_time_arg("valid-from", a.valid_from.as_deref())?,
        valid_until: opt_time_arg("valid-until", a.valid_until.as_deref())?,
        on_expiry,
        grace_days: a.grace_days,
    };
    licence.validate().map_err(|e| usage(e.to_string()))?;
    Ok(LicenceRow::from_model(&licence))
}

/// Opens the store; admin commands never need more than a couple of connections.
async fn open(loaded: &Loaded) -> Result<Store, Failure> {
    Store::connect(&loaded.database_url, &loaded.config.database).await.map_err(|e| {
        Failure::Runtime(anyhow::anyhow!("cannot open database {}: {e}", redact_url(&loaded.database_url)))
    })
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::Runtime(e.into()))?;
    println!("{s}");
    Ok(())
}

/// Runs one admin command.
pub async fn dispatch(cmd: Command, loaded: &Loaded) -> Result<(), Failure> {
    match cmd {
        Command::Run => unreachable!("run is dispatched by cli::main"),
        Command::CheckConfig => check_config(loaded).await,
        Command::Portal(c) => portal(c, loaded).await,
        Command::Plan(c) => plan(c, loaded).await,
        Command::Licence(c) => licence(c, loaded).await,
        Command::Extension(c) => extension(c, loaded).await,
        Command::User(c) => user(c, loaded).await,
        Command::Admission(c) => explain(c, loaded).await,
        Command::Cdr(a) => cdr(a, loaded).await,
        Command::Calls { node, json } => calls(node, json, loaded).await,
        Command::Channels { portal, json } => channels(portal, json, loaded).await,
        Command::Trunks { json } => trunks(json, loaded).await,
        Command::Trunk(c) => trunk_cmd(c, loaded).await,
    }
}

async fn check_config(loaded: &Loaded) -> Result<(), Failure> {
    let store = open(loaded).await?;
    println!("configuration {} is valid", loaded.path.display());
    println!("  node_id: {}", loaded.node_id);
    println!(
        "  database: {} ({}, reachable, schema up to date)",
        redact_url(&loaded.database_url),
        store.kind().as_str()
    );
    for l in &loaded.listen {
        println!("  listen: {l}");
    }
    let m = &loaded.media;
    if m.anchor {
        let public = [m.public_v4.map(|a| a.to_string()), m.public_v6.map(|a| a.to_string())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let public = if public.is_empty() { "the SIP address toward each peer".to_owned() } else { public.join(", ") };
        println!(
            "  media: anchored, ports {}-{} ({} calls), SDP address {public}",
            m.port_min,
            m.port_max,
            (usize::from(m.port_max - m.port_min) + 1) / 4
        );
        if m.browsers {
            let ports = match (m.webrtc_port, m.threads) {
                (0, _) => "any free ports".to_owned(),
                (p, 1) => p.to_string(),
                (p, n) => format!("{p}-{}", usize::from(p) + n - 1),
            };
            println!("  browsers: WebRTC on UDP {ports} (one port per relay thread, shared by its browser legs)");
        }
    } else {
        println!("  media: not anchored (SDP passes unchanged)");
        if m.browsers {
            println!("  browsers: cannot take calls without [media] anchor = true");
        }
    }
    let portals = store.portals().await?;
    for t in &loaded.trunks {
        let p = t.trunk.portal.get_ref();
        let state = match portals.iter().find(|r| &r.id == p) {
            Some(r) => r.status.clone(),
            None => "NOT IN DATABASE".to_owned(),
        };
        println!("  trunk {} -> portal {p} ({state}) from {}", t.trunk.name.get_ref(), t.file.display());
        if let (Some(o), Some(r)) = (&t.trunk.outbound, &t.outbound) {
            let auth = if r.credentials.is_some() { ", answers challenges" } else { "" };
            println!(
                "    outbound: {}://{}:{} = {} (priority {}{auth})",
                r.transport.as_str(),
                r.host,
                r.port,
                r.addr,
                o.priority
            );
        }
    }
    store.close().await;
    Ok(())
}

async fn portal(cmd: PortalCmd, loaded: &Loaded) -> Result<(), Failure> {
    let now = clock::now_utc();
    match cmd {
        PortalCmd::Add { id, domain, licence } => {
            let licence = licence_from_args(&licence)?;
            let store = open(loaded).await?;
            store.portal_add(&NewPortal { id: id.clone(), domain: domain.clone(), licence }, now).await?;
            info!(target: "audit", portal = %id, domain = %domain, "portal added");
            println!("portal {id} added ({domain})");
        }
        PortalCmd::Show { id, json } => {
            let store = open(loaded).await?;
            let Some(row) = store.portal(&id).await? else {
                return Err(Failure::Runtime(StoreError::NotFound { what: "portal", id }.into()));
            };
            let licence = store.licence(&id).await?;
            let extensions = store.extensions(&id).await?;
            let decision = decide_now(&store, &id, now).await?;
            if json {
                return print_json(&json!({
                    "portal": row, "licence": licence, "extensions": extensions, "decision": decision,
                }));
            }
            println!("portal {} ({})", row.id, row.domain);
            println!("  status: {}{}", row.status, row.block_reason.map(|r| format!(" ({r})")).unwrap_or_default());
            println!("  created: {}", format_ts(row.created_at));
            println!("  last activity: {}", opt(row.last_activity_at.map(format_ts)));
            println!("  extranet calls: {}", if row.allow_extranet_calls { "allowed" } else { "not allowed" });
            println!("  max cps override: {}", opt(row.max_cps_override));
            println!("  max call duration: {} s", row.max_call_duration_s);
            if let Some(l) = licence {
                println!(
                    "  licence: {} from {} until {}, on expiry {}, grace {} days",
                    l.plan,
                    opt(l.valid_from.map(format_ts)),
                    opt(l.valid_until.map(format_ts)),
                    l.on_expiry,
                    l.grace_days
                );
            }
            for e in extensions {
                println!(
                    "  extension #{}: {} channels {} .. {}",
                    e.id,
                    e.channels,
                    format_ts(e.valid_from),
                    format_ts(e.valid_until)
                );
            }
            println!("decision now:\n{decision}");
        }
        PortalCmd::List { json } => {
            let store = open(loaded).await?;
            let rows = store.portals().await?;
            if json {
                return print_json(&rows);
            }
            table(
                &["ID", "DOMAIN", "STATUS", "REASON", "LAST ACTIVITY"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.domain.clone(),
                            r.status.clone(),
                            opt(r.block_reason.as_ref()),
                            opt(r.last_activity_at.map(format_ts)),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
        PortalCmd::Block { id, reason } => {
            let reason = BlockReason::from_str(&reason).map_err(|e| usage(e.to_string()))?;
            open(loaded).await?.portal_block(&id, reason, now).await?;
            info!(target: "audit", portal = %id, reason = %reason, "portal blocked");
            println!("portal {id} blocked ({reason})");
        }
        PortalCmd::Unblock { id } => {
            open(loaded).await?.portal_unblock(&id, now).await?;
            info!(target: "audit", portal = %id, "portal unblocked");
            println!("portal {id} unblocked");
        }
        PortalCmd::Delete { id } => {
            open(loaded).await?.portal_delete(&id, now).await?;
            info!(target: "audit", portal = %id, "portal deletion started");
            println!("portal {id} is being deleted; run `portal purge {id}` to complete (within 90 days)");
        }
        PortalCmd::Purge { id } => {
            open(loaded).await?.portal_purge(&id, now).await?;
            info!(target: "audit", portal = %id, "portal purged");
            println!("portal {id} deleted; its domain is free");
        }
        PortalCmd::Set { id, allow_extranet_calls, max_cps, max_call_duration_s } => {
            let settings = PortalSettings {
                allow_extranet_calls,
                max_cps_override: max_cps.as_deref().map(|v| limit_arg("max-cps", v)).transpose()?,
                max_call_duration_s,
            };
            let row = open(loaded).await?.portal_configure(&id, &settings).await?;
            info!(target: "audit", portal = %id, "portal settings changed");
            println!(
                "portal {id}: extranet calls {}, max cps {}, max call duration {} s",
                if row.allow_extranet_calls { "allowed" } else { "not allowed" },
                opt(row.max_cps_override),
                row.max_call_duration_s
            );
        }
    }
    Ok(())
}

async fn plan(cmd: PlanCmd, loaded: &Loaded) -> Result<(), Failure> {
    match cmd {
        PlanCmd::Set { name, max_users, max_cps, included_channels } => {
            let change = PlanChange {
                max_users: max_users.as_deref().map(|v| limit_arg("max-users", v)).transpose()?,
                max_cps: max_cps.as_deref().map(|v| limit_arg("max-cps", v)).transpose()?,
                included_channels,
            };
            let row = open(loaded).await?.plan_set(&name, &change, clock::now_utc()).await?;
            info!(target: "audit", plan = %name, "plan limits changed");
            println!(
                "plan {}: max users {}, max cps {}, included channels {}",
                row.name,
                row.max_users.map_or("unlimited".to_owned(), |v| v.to_string()),
                row.max_cps.map_or("unlimited".to_owned(), |v| v.to_string()),
                row.included_channels
            );
        }
        PlanCmd::List { json } => {
            let rows = open(loaded).await?.plans().await?;
            if json {
                return print_json(&rows);
            }
            table(
                &["PLAN", "MAX USERS", "MAX CPS", "INCLUDED CHANNELS"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.name.clone(),
                            r.max_users.map_or("unlimited".to_owned(), |v| v.to_string()),
                            r.max_cps.map_or("unlimited".to_owned(), |v| v.to_string()),
                            r.included_channels.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(())
}

async fn licence(cmd: LicenceCmd, loaded: &Loaded) -> Result<(), Failure> {
    match cmd {
        LicenceCmd::Set { portal, licence } => {
            let row = licence_from_args(&licence)?;
            open(loaded).await?.licence_set(&portal, &row, clock::now_utc()).await?;
            info!(target: "audit", portal = %portal, plan = %row.plan, "licence set");
            println!("portal {portal}: licence {} set", row.plan);
        }
    }
    Ok(())
}

async fn extension(cmd: ExtensionCmd, loaded: &Loaded) -> Result<(), Failure> {
    match cmd {
        ExtensionCmd::Add { portal, channels, valid_from, valid_until } => {
            let from = time_arg("valid-from", &valid_from)?;
            let until = time_arg("valid-until", &valid_until)?;
            if until <= from {
                return Err(usage("--valid-until must be after --valid-from"));
            }
            if channels == 0 {
                return Err(usage("--channels must be at least 1"));
            }
            let id = open(loaded).await?.extension_add(&portal, channels, from, until, clock::now_utc()).await?;
            info!(target: "audit", portal = %portal, extension = id, channels, "extension added");
            println!("portal {portal}: extension #{id} with {channels} channels added");
        }
        ExtensionCmd::List { portal, json } => {
            let store = open(loaded).await?;
            if store.portal(&portal).await?.is_none() {
                return Err(Failure::Runtime(StoreError::NotFound { what: "portal", id: portal }.into()));
            }
            let rows = store.extensions(&portal).await?;
            if json {
                return print_json(&rows);
            }
            table(
                &["ID", "CHANNELS", "VALID FROM", "VALID UNTIL"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.channels.to_string(),
                            format_ts(r.valid_from),
                            format_ts(r.valid_until),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(())
}

/// Reads the password from the first line of standard input (never argv,
/// which other local users can see in the process list).
fn read_password() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot read the password from standard input: {e}")))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        return Err(usage(
            "no password on standard input (pipe it in, e.g. `printf '%s\\n' \"$PW\" | trunkgate user add …`)",
        ));
    }
    Ok(pw)
}

async fn user(cmd: UserCmd, loaded: &Loaded) -> Result<(), Failure> {
    match cmd {
        UserCmd::Add { portal, username, extranet } => {
            crate::credentials::check_username(&username).map_err(|e| usage(e.to_string()))?;
            let password = read_password()?;
            open(loaded).await?.user_add(&portal, &username, &password, extranet, clock::now_utc()).await?;
            info!(target: "security", portal = %portal, username = %username, extranet, "user added");
            println!("portal {portal}: user {username} added{}", if extranet { " (extranet)" } else { "" });
        }
        UserCmd::List { portal, json } => {
            let store = open(loaded).await?;
            if store.portal(&portal).await?.is_none() {
                return Err(Failure::Runtime(StoreError::NotFound { what: "portal", id: portal }.into()));
            }
            let rows = store.users(&portal).await?;
            if json {
                return print_json(&rows);
            }
            table(
                &["USERNAME", "REALM", "EXTRANET", "DISABLED", "CREATED"],
                &rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.username.clone(),
                            r.realm.clone(),
                            r.extranet.to_string(),
                            r.disabled.to_string(),
                            format_ts(r.created_at),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
        }
        UserCmd::Disable { portal, username } => {
            open(loaded).await?.user_set_disabled(&portal, &username, true).await?;
            info!(target: "security", portal = %portal, username = %username, "user disabled");
            println!("portal {portal}: user {username} disabled");
        }
        UserCmd::SetContact { portal, username, contact } => {
            let c = if contact == "none" { None } else { Some(contact.as_str()) };
            open(loaded).await?.user_set_static_contact(&portal, &username, c).await?;
            info!(target: "audit", portal = %portal, username = %username, "static contact changed");
            println!("portal {portal}: user {username} contact {}", c.unwrap_or("removed"));
        }
        UserCmd::Set { portal, username, outbound, outbound_number } => {
            if outbound.is_none() && outbound_number.is_none() {
                return Err(usage("user set: give --outbound and/or --outbound-number"));
            }
            let number = outbound_number.as_deref().map(|n| if n == "none" { None } else { Some(n) });
            open(loaded).await?.user_set_outbound(&portal, &username, outbound.as_deref(), number).await?;
            info!(target: "audit", portal = %portal, username = %username, ?outbound, ?outbound_number, "outbound settings changed");
            if let Some(o) = &outbound {
                println!("portal {portal}: user {username} outbound {o}");
            }
            if let Some(n) = number {
                println!("portal {portal}: user {username} outbound number {}", n.unwrap_or("the trunk's"));
            }
        }
        UserCmd::Enable { portal, username } => {
            open(loaded).await?.user_set_disabled(&portal, &username, false).await?;
            info!(target: "security", portal = %portal, username = %username, "user enabled");
            println!("portal {portal}: user {username} enabled");
        }
    }
    Ok(())
}

/// The decision for a call to `portal` at `at`, with the fleet's calls in
/// progress counted from the lease table.
async fn decide_now(store: &Store, portal: &str, at: DateTime<Utc>) -> Result<admission::Decision, Failure> {
    let snapshot = store.portal_snapshot(portal).await?;
    let active_calls = store.active_calls(portal, at).await?;
    let request = CallRequest { portal: PortalId::new(portal), node_overloaded: false };
    let counters = Counters { active_calls, calls_this_second: 0 };
    Ok(admission::decide(&request, snapshot.as_ref(), &counters, at))
}

async fn explain(cmd: AdmissionCmd, loaded: &Loaded) -> Result<(), Failure> {
    match cmd {
        AdmissionCmd::Explain { portal, at, json } => {
            let at = match at {
                Some(t) => time_arg("at", &t)?,
                None => clock::now_utc(),
            };
            let store = open(loaded).await?;
            let decision = decide_now(&store, &portal, at).await?;
            if json {
                return print_json(&json!({ "portal": portal, "at": at, "decision": decision }));
            }
            println!("portal {portal} at {}:", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            println!("{decision}");
        }
    }
    Ok(())
}

async fn cdr(a: CdrArgs, loaded: &Loaded) -> Result<(), Failure> {
    let since = opt_time_arg("since", a.since.as_deref())?;
    let rows = open(loaded).await?.call_records(a.portal.as_deref(), since, a.limit).await?;
    if a.json {
        return print_json(&rows);
    }
    table(
        &["STARTED", "PORTAL", "TRUNK", "DIR", "CALLER", "CALLEE", "USER", "OUTCOME", "CODE", "REASON", "CALL-ID"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    format_ts(r.started_at),
                    opt(r.portal_id.as_ref()),
                    opt(r.trunk.as_ref()),
                    r.direction.clone(),
                    opt(r.caller.as_ref()),
                    opt(r.callee.as_ref()),
                    opt(r.target_user.as_ref()),
                    r.outcome.clone(),
                    opt(r.sip_status),
                    opt(r.reason.as_ref()),
                    r.call_id.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(())
}

/// One trunk as `trunks` shows it.
#[derive(Debug, serde::Serialize)]
struct TrunkView {
    name: String,
    portal: String,
    sources: Vec<String>,
    outbound: Option<OutboundView>,
    registration: Option<crate::store::TrunkRegistrationRow>,
    health: Vec<crate::store::TrunkHealthRow>,
}

#[derive(Debug, serde::Serialize)]
struct OutboundView {
    target: String,
    priority: u32,
    register: Option<String>,
    options_interval_s: u32,
}

async fn trunks(json: bool, loaded: &Loaded) -> Result<(), Failure> {
    let store = open(loaded).await?;
    let regs = store.registrations().await?;
    let health = store.trunk_health().await?;
    let views: Vec<TrunkView> = loaded
        .trunks
        .iter()
        .map(|lt| {
            let name = lt.trunk.name.get_ref().clone();
            TrunkView {
                portal: lt.trunk.portal.get_ref().clone(),
                sources: lt.sources.iter().map(|s| s.0.to_string()).collect(),
                outbound: lt.trunk.outbound.as_ref().zip(lt.outbound.as_ref()).map(|(o, r)| OutboundView {
                    target: format!("{}://{}:{}", r.transport.as_str(), r.host, r.port),
                    priority: o.priority,
                    register: r.registration.as_ref().map(|g| format!("{} as {}", g.aor, g.contact_user)),
                    options_interval_s: o.options_interval_s,
                }),
                registration: regs.iter().find(|r| r.trunk == name).cloned(),
                health: health.iter().filter(|h| h.trunk == name).cloned().collect(),
                name,
            }
        })
        .collect();
    store.close().await;
    if json {
        return print_json(&views);
    }
    let now = clock::now_utc().timestamp();
    table(
        &["TRUNK", "PORTAL", "INBOUND FROM", "OUTBOUND TO", "REGISTRATION", "HEALTH"],
        &views
            .iter()
            .map(|v| {
                let registration = match (&v.outbound.as_ref().and_then(|o| o.register.clone()), &v.registration) {
                    (None, _) => "-".to_owned(),
                    (Some(_), None) => "not yet claimed".to_owned(),
                    (Some(_), Some(r)) if r.expires_at <= now && r.state != "released" => {
                        format!("{} on {} (claim expired: node gone?)", r.state, r.node_id)
                    }
                    (Some(_), Some(r)) => {
                        format!(
                            "{} on {}{}",
                            r.state,
                            r.node_id,
                            r.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
                        )
                    }
                };
                let health = if v.health.is_empty() {
                    if v.outbound.as_ref().is_some_and(|o| o.options_interval_s > 0) { "not pinged yet" } else { "-" }
                        .to_owned()
                } else {
                    v.health
                        .iter()
                        .map(|h| {
                            format!(
                                "{} {} since {} ({})",
                                h.node_id,
                                if h.up == 1 { "up" } else { "DOWN" },
                                format_ts(h.since),
                                h.detail.as_deref().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                vec![
                    v.name.clone(),
                    v.portal.clone(),
                    if v.sources.is_empty() { "-".to_owned() } else { v.sources.join(",") },
                    v.outbound
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |o| format!("{} (priority {})", o.target, o.priority)),
                    registration,
                    health,
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(())
}

async fn trunk_cmd(cmd: crate::cli::TrunkCmd, loaded: &Loaded) -> Result<(), Failure> {
    use crate::cli::TrunkCmd;
    let find = |name: &str| {
        loaded
            .trunks
            .iter()
            .find(|t| t.trunk.name.get_ref() == name)
            .ok_or_else(|| usage(format!("no trunk `{name}` in the configuration")))
    };
    match cmd {
        TrunkCmd::SetCredentials { trunk, username } => {
            let t = find(&trunk)?;
            let Some(o) = t.outbound.as_ref() else {
                return Err(usage(format!("trunk `{trunk}` has no [trunk.outbound]: it sends no calls")));
            };
            if o.credentials.is_some() {
                eprintln!("note: {} names credentials for `{trunk}`; they win over the database's", t.file.display());
            }
            let password = read_password()?;
            let now = clock::now_utc().timestamp();
            open(loaded).await?.trunk_credentials_set(&trunk, &username, &password, now).await?;
            info!(target: "audit", trunk = %trunk, username = %username, "trunk credentials stored");
            println!("trunk {trunk}: credentials stored for {username} (taken at the daemon's next start)");
        }
        TrunkCmd::ClearCredentials { trunk } => {
            let removed = open(loaded).await?.trunk_credentials_remove(&trunk).await?;
            info!(target: "audit", trunk = %trunk, removed, "trunk credentials removed");
            println!("trunk {trunk}: {}", if removed { "credentials removed" } else { "no stored credentials" });
        }
    }
    Ok(())
}

async fn channels(portal: Option<String>, json: bool, loaded: &Loaded) -> Result<(), Failure> {
    let rows = open(loaded).await?.allowances(portal.as_deref(), clock::now_utc()).await?;
    if json {
        return print_json(&rows);
    }
    table(
        &["PORTAL", "NODE", "GRANTED", "UNTIL"],
        &rows
            .iter()
            .map(|r| vec![r.portal_id.clone(), r.node_id.clone(), r.granted.to_string(), format_ts(r.expires_at)])
            .collect::<Vec<_>>(),
    );
    Ok(())
}

async fn calls(node: Option<String>, json: bool, loaded: &Loaded) -> Result<(), Failure> {
    let rows = open(loaded).await?.calls_in_progress(node.as_deref(), clock::now_utc()).await?;
    if json {
        return print_json(&rows);
    }
    table(
        &["PORTAL", "NODE", "SINCE", "LEASE UNTIL", "CALL"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.portal_id.clone(),
                    r.node_id.clone(),
                    format_ts(r.acquired_at),
                    format_ts(r.expires_at),
                    r.call_id.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(())
}
