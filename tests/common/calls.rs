//! Helpers of the call tests: the PBX's sipp, call records and leases as
//! the CLI shows them.

use std::path::Path;

use serde_json::Value;

use super::daemon::{Daemon, SippChild, sipp_start};

/// The trunk's address: the PBX's sipp sends from it.
pub const PBX_IP: &str = "127.0.0.2";

/// The PBX: sipp from [`PBX_IP`] placing one call to `number` with `scenario`.
pub fn pbx(d: &Daemon, scenario: &Path, number: &str, extra: &[&str]) -> SippChild {
    sipp_start(scenario, Some(d.udp), PBX_IP, 0, &[&["-m", "1", "-key", "number", number], extra].concat())
}

fn json_list(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let v: Value = serde_json::from_str(&d.cli(args)).expect("json");
    v.as_array().cloned().unwrap_or_default()
}

/// `trunkgate cdr --json`, newest first.
pub fn cdr(d: &Daemon) -> Vec<Value> {
    json_list(d, &["cdr", "--json"])
}

/// `trunkgate calls --json`: the fleet's leases as node `d` sees them.
pub fn leases(d: &Daemon) -> Vec<Value> {
    json_list(d, &["calls", "--json"])
}

/// Waits (bounded) until the CDR holds at least `n` records; returns them
/// newest first.
pub fn wait_cdr(d: &Daemon, n: usize) -> Vec<Value> {
    super::retry_until(10, &format!("expected {n} call records"), || {
        let c = cdr(d);
        if c.len() >= n { Ok(c) } else { Err(format!("{c:?}")) }
    })
}

/// Waits (bounded) until the leases satisfy `ok`.
pub fn wait_calls(d: &Daemon, what: &str, ok: impl Fn(&Vec<Value>) -> bool) {
    super::retry_until(10, what, || {
        let list = leases(d);
        if ok(&list) { Ok(()) } else { Err(format!("{list:?}")) }
    });
}

/// Waits (bounded) until no lease is left: every channel came back.
pub fn wait_no_calls(d: &Daemon) {
    wait_calls(d, "leases left", Vec::is_empty);
}

/// Exactly `n` call records, no more: waits for `n`, then for every channel
/// to come back (the calls are over), then stops the daemon, which writes
/// every record it still holds before it exits; a call recorded twice shows
/// as `n + 1` here. Returns the records, newest first.
pub fn exactly_n_records(d: &mut Daemon, n: usize) -> Vec<Value> {
    wait_cdr(d, n);
    wait_no_calls(d);
    assert_eq!(d.stop(), Some(0), "clean stop:\n{}", d.log_text());
    let records = cdr(d);
    assert_eq!(records.len(), n, "exactly {n} call records: {records:#?}");
    records
}
