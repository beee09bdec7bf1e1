//! eventuate-rs measured side by side with other Rust event-sourcing libraries on one
//! PostgreSQL server, in one run (issue #10): cqrs-es with postgres-es, esrs, and disintegrate
//! with disintegrate-postgres, plus a raw sqlx floor.
//!
//! Every library drives the same bank account (Open and Deposit commands; Opened and Deposited
//! events) the way its documentation shows, in a database of its own on the same throwaway
//! server (fsync and synchronous_commit on), through a pool of the same size. Workloads:
//!
//! - commands/s at 1 and 32 tasks, each command a load + decide + append of one event on a
//!   random account of the task's own (see [`commands`]);
//! - loading one 10,000-event account (see [`load`]);
//! - catch-up of a no-op subscriber over 50,000 (quick) or 100,000 stored events (see
//!   [`catchup`]).
//!
//! The sides of a workload run interleaved, round after round in rotating order, so that noise
//! from the shared machine hits them alike. The table is printed as markdown; the figures are
//! also written as JSON (`--json PATH`, default `peers-bench.json` in the target directory).
//!
//! `cargo run --release --manifest-path benches/peers/Cargo.toml -- [--quick] [--json PATH]`

mod catchup;
mod commands;
mod contenders;
mod env;
mod load;
mod report;
mod stats;

use std::path::PathBuf;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxResult<T> = Result<T, BoxError>;

/// Connections in every library's pool.
pub const POOL_SIZE: u32 = 32;

/// What the command line asked for.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub quick: bool,
}

impl Mode {
    /// Interleaved rounds per workload.
    pub fn rounds(self) -> usize {
        if self.quick { 3 } else { 5 }
    }
}

fn main() {
    let mut quick = false;
    let mut json: Option<PathBuf> = None;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => match args.next() {
                Some(path) => json = Some(path.into()),
                None => usage("--json needs a path"),
            },
            "--only" => match args.next() {
                Some(list) => {
                    for workload in list.split(',') {
                        if !WORKLOADS.contains(&workload) {
                            usage(&format!(
                                "unknown workload {workload} (one of {})",
                                WORKLOADS.join(", ")
                            ));
                        }
                        only.push(workload.to_owned());
                    }
                }
                None => usage("--only needs a list of workloads"),
            },
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => fail(&format!("cannot start the tokio runtime: {error}")),
    };
    if let Err(error) = runtime.block_on(run(Mode { quick }, &only, json)) {
        fail(&error.to_string());
    }
}

/// The workloads `--only` can name.
const WORKLOADS: [&str; 3] = ["commands", "load", "catchup"];

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!(
        "usage: cargo run --release --manifest-path benches/peers/Cargo.toml -- [--quick] [--only commands,load,catchup] [--json PATH]"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 })
}

fn fail(message: &str) -> ! {
    eprintln!("peers bench failed: {message}");
    std::process::exit(1)
}

/// Runs the workloads named in `only` (all when it is empty).
async fn run(mode: Mode, only: &[String], json: Option<PathBuf>) -> BoxResult<()> {
    let runs = |workload: &str| only.is_empty() || only.iter().any(|w| w == workload);
    let env = env::Env::start().await?;
    eprintln!(
        "server: {} ({}); {} mode",
        env.server_version,
        env.settings_line(),
        if mode.quick { "quick" } else { "full" }
    );
    if !env.durable() {
        return Err("the server does not commit durably (fsync or synchronous_commit off)".into());
    }
    let mut report = report::Report::new(&env, mode);
    let sides = contenders::Sides::connect(&env).await?;

    if runs("commands") {
        eprintln!("(a) commands/s ...");
        report.commands = commands::run(&sides, mode).await?;
    }
    if runs("load") {
        eprintln!("(c) load of a 10,000-event account ...");
        report.loads = load::run(&sides, mode).await?;
    }
    sides.close().await;
    if runs("catchup") {
        eprintln!("(b) catch-up ...");
        report.catchup = catchup::run(&env, mode).await?;
    }

    report.finish();
    println!("{}", report.markdown());
    let path = json.unwrap_or_else(default_json_path);
    std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("figures written to {}", path.display());
    Ok(())
}

/// `peers-bench.json` in the target directory the binary was built into.
fn default_json_path() -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."));
    target.join("peers-bench.json")
}
