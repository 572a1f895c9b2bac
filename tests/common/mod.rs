//! Shared test support: real databases (a SQLite file, a PostgreSQL schema)
//! and the real `trunkgate` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// PostgreSQL server for tests: `TRUNKGATE_TEST_PG_URL`, else the local
/// server on 127.0.0.1:5432 (database `test`). The test script starts a
/// throwaway server and sets the variable when that one does not answer.
pub fn pg_base_url() -> String {
    std::env::var("TRUNKGATE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty schema on the test server, and a URL whose connections use
/// it (`search_path`), so tests run in parallel without seeing each other.
/// Panics (fails the test) when no server answers: never a silent skip.
pub async fn pg_schema_url() -> String {
    let base = pg_base_url();
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for this test: {e}"));
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::UNIX_EPOCH.elapsed().map(|d| d.subsec_nanos()).unwrap_or(0)
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// A SQLite database URL in a fresh temporary folder (kept alive by the guard).
pub fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("state/trunkgate.db").display());
    (dir, url)
}

/// Path of the `trunkgate` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trunkgate"))
}

/// A minimal valid config in `dir` using `db_url`.
pub fn write_config(dir: &Path, db_url: &str, extra: &str) -> PathBuf {
    let p = dir.join("trunkgate.toml");
    let text = format!(
        "node_id = \"test-node\"\nstate_dir = \"{}\"\n[database]\nurl = \"{db_url}\"\n[sip]\nlisten = [\"udp://127.0.0.1:0\"]\n{extra}",
        dir.join("state").display()
    );
    std::fs::write(&p, text).expect("write config");
    p
}

/// Retries `attempt` until it gives a value, for at most `secs` seconds: for
/// changes that reach a running daemon "within about a second", or records
/// written behind. Panics with `what` and the last failure otherwise.
pub fn retry_until<T>(secs: u64, what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = wall_now() + std::time::Duration::from_secs(secs);
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(last) => assert!(wall_now() < deadline, "{what}: {last}"),
        }
        std::thread::yield_now();
    }
}

/// Polls `ok` for at most `secs` seconds: `Err(())` when it never held (the
/// caller gathers what explains the failure).
#[allow(dead_code)]
pub fn retry_until_ok(secs: u64, mut ok: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = wall_now() + std::time::Duration::from_secs(secs);
    while wall_now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(())
}

pub mod calls;
pub mod daemon;

/// The wall clock, for bounding waits on real processes (tests of the real
/// daemon are drivers: they may read the clock, protocol code may not).
#[allow(clippy::disallowed_methods)]
pub fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Unix seconds now (to wait for a time the database holds).
#[allow(clippy::disallowed_methods, dead_code)]
pub fn wall_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
pub mod baresip;
pub mod browser;
pub mod ws;

/// Debian's sip-tester captures (G.711 audio, RFC 4733 digits).
pub const CAPTURES: &str = "/usr/share/sip-tester";

/// The RTP packets (UDP payloads) of a capture in [`CAPTURES`], in order.
pub fn capture(name: &str) -> Vec<Vec<u8>> {
    let d = std::fs::read(Path::new(CAPTURES).join(name)).unwrap_or_else(|e| panic!("{name}: {e} (sip-tester)"));
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= d.len() {
        let incl = u32::from_le_bytes([d[at + 8], d[at + 9], d[at + 10], d[at + 11]]) as usize;
        let frame = &d[at + 16..at + 16 + incl];
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        out.push(ip[ihl + 8..].to_vec());
        at += 16 + incl;
    }
    out
}
