//! The softphone page in a real browser: Debian's Chromium, headless with a
//! fake microphone, driven by playwright-core through the page's own
//! controls against the real daemon over `wss://`. Screenshots of each run
//! are kept under `target/browser-screenshots/<test>/`.

mod common;

use common::browser::Browser;
use common::ws::wss_daemon;

fn daemon() -> common::daemon::Daemon {
    wss_daemon("", "").0
}

fn url(d: &common::daemon::Daemon) -> String {
    format!("https://{}", d.wss.expect("wss listener"))
}

#[test]
fn a_wrong_password_is_shown_on_the_page() {
    let d = daemon();
    let b = Browser::start(
        "wrong-password",
        &url(&d),
        ("acme.example.com", "alice", "not-her-password"),
        "",
        "a_wrong_password_is_shown_on_the_page",
    );
    let shown = b.wait("error-shown", 30);
    assert_eq!(shown["text"], "Wrong username or password.", "{shown}");
    assert_eq!(shown["state"], "logged-out", "{shown}");
    assert!(b.finish(), "the browser script ended cleanly");
    // The daemon saw a REGISTER over the browser's WebSocket and refused it.
    d.wait_log(&["REGISTER authentication failed", "alice"]);
    d.wait_log(&["websocket connection open"]);
}
