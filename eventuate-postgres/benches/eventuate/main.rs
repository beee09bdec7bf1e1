//! The eventuate-rs benchmark: throughput, latency and load time of the framework on
//! PostgreSQL, each figure next to a raw sqlx floor measured in the same run, against the same
//! server, with the same pool size, and as a ratio (machines here are shared and noisy, so only
//! ratios are comparable between runs).
//!
//! ```text
//! cargo bench -p eventuate-postgres --bench eventuate -- --quick     # about a minute
//! cargo bench -p eventuate-postgres --bench eventuate                # full
//!   options: --json PATH (default target/eventuate-bench.json)
//!            --only commands,bulk,load,delivery,catchup,idle,txview,status
//!            --diagnose (CPU, commits, WAL, statements and waits per operation; see diag.rs)
//!            --tracing-info (tracing-subscriber's fmt layer installed at INFO, output
//!              discarded: what an application that logs at INFO pays)
//! ```
//!
//! Without `DATABASE_URL` it starts a throwaway PostgreSQL with durable settings (fsync and
//! synchronous_commit on); the settings are recorded in the output either way.
//!
//! | module | workloads |
//! | --- | --- |
//! | [`commands`] | 1 (commands/s and latency at 1, 8, 32 tasks, with and without cache), 6 (scaling), 7 (wake-ups out of the commit path) |
//! | [`bulk`] | 2 (100 events per append) |
//! | [`load`] | 3 (10,000-event aggregate, with and without snapshot) |
//! | [`delivery`] | 4 (command -> handler latency) |
//! | [`catchup`] | 5 (subscriber catch-up) |
//! | [`idle`] | 8a (rows an idle subscriber's reads fetch per append of another entity type) |
//! | [`transactional`] | 8b (transactional, exactly-once view subscriber catch-up) |
//! | [`status`] | 8c (`Running::status()` of a subscriber far behind) |

mod account;
mod bulk;
mod catchup;
mod commands;
mod delivery;
mod diag;
mod env;
mod idle;
mod load;
mod report;
mod stats;
mod status;
mod transactional;

use std::path::PathBuf;
use std::time::Instant;

pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How big a run is.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub quick: bool,
    /// Connections in every pool, framework and raw alike.
    pub pool_size: u32,
}

impl Mode {
    /// Interleaved rounds per comparison.
    pub fn rounds(&self) -> usize {
        if self.quick { 2 } else { 5 }
    }
}

const GROUPS: &[&str] = &[
    "commands", "bulk", "load", "delivery", "catchup", "idle", "txview", "status",
];

#[derive(Debug)]
struct Args {
    quick: bool,
    diagnose: bool,
    tracing_info: bool,
    json: PathBuf,
    only: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        diagnose: false,
        tracing_info: false,
        json: default_json_path(),
        only: GROUPS.iter().map(|g| (*g).to_owned()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--diagnose" => args.diagnose = true,
            "--tracing-info" => args.tracing_info = true,
            "--json" => args.json = it.next().ok_or("--json needs a path")?.into(),
            "--only" => {
                let list = it.next().ok_or("--only needs a list")?;
                args.only = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = args.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    return Err(format!(
                        "unknown group `{bad}`; groups: {}",
                        GROUPS.join(",")
                    ));
                }
            }
            // Passed by `cargo bench`.
            "--bench" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

/// `target/eventuate-bench.json` of the workspace (benches run in the package directory).
fn default_json_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("eventuate-bench.json")
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("eventuate bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("eventuate bench failed: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> BoxResult<()> {
    let started = std::time::SystemTime::now();
    let mode = Mode {
        quick: args.quick,
        pool_size: 32,
    };
    let env = env::Env::start(args.diagnose).await?;
    let diag = match args.diagnose {
        true => Some(diag::Diagnosis::connect(&env.url).await?),
        false => None,
    };
    eprintln!(
        "eventuate bench ({}): {}; {}",
        if mode.quick { "quick" } else { "full" },
        env.server_version,
        env.source
    );
    let measuring = Instant::now();
    let mut rows = Vec::new();
    let mut notes = vec![format!(
        "interleaved rounds per comparison: {} (variants alternate, so noise hits both sides)",
        mode.rounds()
    )];
    if args.tracing_info {
        // For the whole process: the framework and the floors alike (the floors log nothing).
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .init();
        notes.push(
            "tracing: tracing-subscriber's fmt layer at INFO, output discarded (--tracing-info)"
                .to_owned(),
        );
    }
    let only = |group: &str| args.only.iter().any(|g| g == group);
    let section =
        |name: &str| eprintln!("  {name} ... ({:.0} s)", measuring.elapsed().as_secs_f64());
    let outcome: BoxResult<()> = async {
        if only("commands") {
            section("commands");
            rows.extend(commands::run(&env, mode, diag.as_ref()).await?);
        }
        if only("bulk") {
            section("bulk");
            rows.extend(bulk::run(&env, mode, diag.as_ref()).await?);
        }
        if only("load") {
            section("load");
            rows.extend(load::run(&env, mode, diag.as_ref()).await?);
        }
        if only("delivery") {
            section("delivery");
            rows.extend(delivery::run(&env, mode, diag.as_ref()).await?);
        }
        if only("catchup") {
            section("catchup");
            let (catchup_rows, note) = catchup::run(&env, mode, diag.as_ref()).await?;
            rows.extend(catchup_rows);
            notes.extend(note);
        }
        if only("idle") {
            section("idle");
            let (idle_rows, note) = idle::run(&env, mode).await?;
            rows.extend(idle_rows);
            notes.extend(note);
        }
        if only("txview") {
            section("txview");
            let (tx_rows, note) = transactional::run(&env, mode).await?;
            rows.extend(tx_rows);
            notes.extend(note);
        }
        if only("status") {
            section("status");
            let (status_rows, note) = status::run(&env, mode).await?;
            rows.extend(status_rows);
            notes.extend(note);
        }
        Ok(())
    }
    .await;
    let measuring_secs = measuring.elapsed().as_secs_f64();
    if let Err(e) = env.cleanup().await {
        eprintln!("could not drop the benchmark's schemas: {e}");
    }
    outcome?;
    rows.sort_by(|a, b| a.workload[..2].cmp(&b.workload[..2]));

    let ctx = report::Context {
        env: &env,
        quick: mode.quick,
        pool_size: mode.pool_size,
        started,
        measuring_secs,
        notes,
    };
    println!("{}", report::markdown(&ctx, &rows));
    let diagnosis = diag.as_ref().map(diag::Diagnosis::report);
    if let Some(report) = &diagnosis {
        println!("{}", diag::markdown(report));
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&report::json(&ctx, &rows, diagnosis.as_ref()))?,
    )?;
    let written = std::fs::canonicalize(&args.json).unwrap_or(args.json);
    eprintln!("JSON written to {}", written.display());
    Ok(())
}
