//! The `eventuate-server` binary's own surface: `--help` and its start-up errors. (Serving is
//! tested through the library; the binary serving with `--relay` in tests/relay.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use eventuate_server::ServerOptions;

/// Runs the binary to its end, with no store configured: without DATABASE_URL it would start
/// a throwaway PostgreSQL, which these tests expect it never to reach.
fn server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventuate-server"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("EVENTUATE_LISTEN")
        .env_remove("EVENTUATE_STOMP_LISTEN")
        .env_remove("EVENTUATE_RELAY")
        .output()
        .unwrap()
}

#[test]
fn help_describes_every_limit_with_its_default() {
    let output = server(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    println!("{help}");
    let defaults = ServerOptions::default();
    // Each flag has a line of its own, after the usage line, that gives its default.
    let described = |flag: &str, default: String| {
        let (_, after) = help
            .split_once(&format!("\n  {flag}"))
            .unwrap_or_else(|| panic!("a description of {flag}"));
        let (description, _) = after.split_once("\n  --").unwrap_or((after, ""));
        assert!(
            description.contains(&format!("(default {default}")),
            "{flag}: {description}"
        );
        description.to_owned()
    };
    let connections = described("--max-connections", defaults.max_connections.to_string());
    assert!(
        connections.contains("HTTP connections") && connections.contains("PostgreSQL"),
        "what it limits, and what it does not: {connections}"
    );
    assert_eq!(defaults.body_limit, 4 << 20);
    described("--body-limit", "4194304, 4 MiB".into());
    described("--request-timeout-ms", "30000, 30 s".into());
    described("--idle-timeout-ms", "60000, 60 s".into());
    assert_eq!(defaults.request_timeout, Duration::from_secs(30));
    assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
    for flag in ["--listen", "--stomp-listen", "--schema"] {
        assert!(help.contains(&format!("\n  {flag} ")), "{flag}");
    }
}

#[test]
fn a_taken_port_fails_at_once_naming_the_flag_and_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    for (args, flag) in [
        (vec!["--listen", &address], "--listen"),
        (
            vec!["--listen", "127.0.0.1:0", "--stomp-listen", &address],
            "--stomp-listen",
        ),
    ] {
        let started = Instant::now();
        let output = server(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: cannot listen on {address} ({flag}): ")),
            "{stderr}"
        );
        // Before any store: no throwaway PostgreSQL was started for nothing.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!stdout.contains("store:"), "{stdout}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// The binary logs: a database that refuses connections is retried with a WARN line naming
/// the cause, on stderr, while it waits (it said nothing for 30 s).
#[test]
fn the_binary_logs_its_warnings_to_stderr() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventuate-server"))
        .args(["--listen", "127.0.0.1:0", "--stomp-listen", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/app")
        .env_remove("RUST_LOG")
        .env_remove("EVENTUATE_RELAY")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains("WARN") && line.to_lowercase().contains("refused");
                seen.push(line);
                if found {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "a WARN naming the cause; stderr: {seen:#?}");
}
