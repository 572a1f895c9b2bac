//! The shipped systemd unit passes `systemd-analyze verify` with no warning,
//! and the sysusers/tmpfiles entries agree with it.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Verifies `unit_text` (with ExecStart pointing at the test binary, since
/// /usr/bin/trunkgate is not installed here); returns stderr.
fn verify(unit_text: &str) -> Option<String> {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        // The test script installs systemd; without it, say so loudly.
        eprintln!("systemd-analyze is not installed: unit NOT verified");
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze must be installed in CI");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("trunkgate.service");
    let text = unit_text.replace("/usr/bin/trunkgate", env!("CARGO_BIN_EXE_trunkgate"));
    std::fs::write(&unit, text).expect("write unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "systemd-analyze failed: {stderr}");
    // Only lines about our unit count (the host may have broken units of its own).
    Some(stderr.lines().filter(|l| l.contains("trunkgate.service")).collect::<Vec<_>>().join("\n"))
}

#[test]
fn unit_verifies_cleanly() {
    let unit = std::fs::read_to_string(root().join("systemd/trunkgate.service")).expect("unit");
    assert!(unit.contains("Type=notify"), "READY is sent by the daemon");
    if let Some(warnings) = verify(&unit) {
        assert!(warnings.is_empty(), "systemd-analyze warnings:\n{warnings}");
    }
}

/// The check above can fail: a broken unit produces a warning we see.
#[test]
fn verify_catches_a_broken_unit() {
    let unit = std::fs::read_to_string(root().join("systemd/trunkgate.service")).expect("unit");
    let broken = unit.replace("Type=notify", "Type=notifyy");
    if let Some(warnings) = verify(&broken) {
        assert!(warnings.contains("Failed to parse service type"), "got: {warnings}");
    }
}

#[test]
fn sysusers_and_tmpfiles_match_the_unit() {
    let unit = std::fs::read_to_string(root().join("systemd/trunkgate.service")).expect("unit");
    let sysusers = std::fs::read_to_string(root().join("systemd/trunkgate.sysusers")).expect("sysusers");
    let tmpfiles = std::fs::read_to_string(root().join("systemd/trunkgate.tmpfiles")).expect("tmpfiles");
    assert!(unit.contains("User=trunkgate") && sysusers.contains("u trunkgate "), "user declared");
    assert!(
        unit.contains("StateDirectory=trunkgate") && tmpfiles.contains("d /var/lib/trunkgate 0750 trunkgate trunkgate")
    );
    assert!(unit.contains("--config /etc/trunkgate/trunkgate.toml") && tmpfiles.contains("d /etc/trunkgate "));
}
