//! A headless Chromium for the browser tests, driven over the DevTools protocol by the
//! Python scripts beside the tests (`cdp_page.py` here). Missing tools fail the test with the
//! command that installs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `chromium` binary, or a failure that says how to install it.
pub fn chromium() -> String {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return candidate.to_owned();
        }
    }
    panic!(
        "the browser tests need a headless Chromium: install Debian's package with \
         `apt-get install -y chromium` (.ci/run does)"
    );
}

/// `python3` with `websocket-client`, or a failure that says how to install it.
pub fn python_with_websocket() {
    let ok = Command::new("python3")
        .args(["-c", "import websocket"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the browser tests drive Chromium from tests/cdp*.py, which needs python3 with \
         websocket-client: `python3 -m pip install websocket-client` (or Debian's \
         `apt-get install -y python3-websocket`); .ci/run installs it"
    );
}

/// A headless Chromium, killed on drop.
pub struct Browser {
    child: std::process::Child,
    pub port: u16,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn launch_chromium() -> Browser {
    let binary = chromium();
    let profile = TempDir(std::env::temp_dir().join(format!(
        "eventuate-chromium-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    )));
    std::fs::create_dir_all(&profile.0).expect("profile directory");
    let mut child = Command::new(&binary)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1100,720",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary} did not start: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    // Chromium prints `DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..` on
    // stderr; a thread reads it (and keeps draining stderr afterwards).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                let port = rest
                    .split('/')
                    .next()
                    .and_then(|host| host.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok());
                if let (Some(tx), Some(port)) = (tx.take(), port) {
                    let _ = tx.send(Ok(port));
                }
            } else if tx.is_some() {
                lines.push(line);
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(lines.join("\n")));
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(port)) => port,
        Ok(Err(stderr)) => panic!("{binary} exited without a DevTools port:\n{stderr}"),
        Err(_) => panic!("{binary} printed no DevTools port within 60 s"),
    };
    Browser {
        child,
        port,
        _profile: profile,
    }
}

/// Loads `url` in the browser, waits (30 s at most) until `ready` (a JS expression) is true,
/// and returns the value of `result` (a JS expression), through `tests/cdp_page.py`.
pub async fn cdp_page(browser: &Browser, url: &str, ready: &str, result: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cdp_page.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(browser.port.to_string())
        .args([url, ready, result])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cdp_page.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("cdp_page.py printed {stdout}: {e}"))
}
