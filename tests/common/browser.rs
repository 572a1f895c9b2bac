//! Debian's Chromium, headless with a fake microphone, driven through the
//! softphone page by `tests/browser/softphone.mjs` (playwright-core). The
//! script reports each step as a JSON line; [`Browser`] collects them so a
//! test can wait for a step while it acts at the PBX side.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// Where the screenshots of a test run are kept (with the test output):
/// `target/browser-screenshots/<test>/`.
pub fn screenshot_dir(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("browser-screenshots").join(test)
}

/// A running browser scenario. Killed on drop.
pub struct Browser {
    child: Option<Child>,
    events: Arc<(Mutex<Vec<Value>>, Condvar)>,
    stderr: Arc<Mutex<String>>,
}

impl Browser {
    /// Starts `scenario` against the page at `url` (`https://IP:PORT`).
    pub fn start(scenario: &str, url: &str, user: (&str, &str, &str), digits: &str, test: &str) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/softphone.mjs");
        let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/playwright-core");
        assert!(
            modules.is_dir(),
            "playwright-core is not installed: run scripts/test.sh (it runs npm ci in tests/browser)"
        );
        assert!(Path::new("/usr/bin/chromium").exists(), "Debian's chromium is not installed: run scripts/test.sh");
        let plan = json!({
            "scenario": scenario, "url": url, "domain": user.0, "username": user.1, "password": user.2,
            "digits": digits, "out": screenshot_dir(test),
        });
        let mut child = Command::new("node")
            .arg(&script)
            .arg(plan.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (the test script installs it)");
        let events: Arc<(Mutex<Vec<Value>>, Condvar)> = Arc::default();
        let stderr: Arc<Mutex<String>> = Arc::default();
        let out = child.stdout.take().expect("stdout");
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v = serde_json::from_str::<Value>(&line).unwrap_or_else(|_| json!({"event": "raw", "line": line}));
                if let Ok(mut l) = ev.0.lock() {
                    l.push(v);
                }
                ev.1.notify_all();
            }
            if let Ok(mut l) = ev.0.lock() {
                l.push(json!({"event": "exit"}));
            }
            ev.1.notify_all();
        });
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Browser { child: Some(child), events, stderr }
    }

    /// Waits up to `secs` for step `event`; panics (with every step so far)
    /// if the script failed or ended without it.
    pub fn wait(&self, event: &str, secs: u64) -> Value {
        let (lock, cv) = &*self.events;
        let mut list = lock.lock().expect("events");
        let deadline = super::wall_now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = list.iter().find(|v| v["event"] == event) {
                return v.clone();
            }
            let ended = list.iter().any(|v| v["event"] == "failed" || v["event"] == "exit");
            let left = deadline.saturating_duration_since(super::wall_now());
            if ended || left.is_zero() {
                let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!("browser step `{event}` never came:\n{}\nstderr:\n{stderr}", self.render(&list));
            }
            list = cv.wait_timeout(list, left).expect("events").0;
        }
    }

    /// Every step so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn render(&self, list: &[Value]) -> String {
        list.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
    }

    /// Waits for the script to end; its exit status.
    pub fn finish(mut self) -> bool {
        self.child.take().and_then(|mut c| c.wait().ok()).is_some_and(|s| s.success())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
