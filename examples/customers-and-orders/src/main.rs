//! `customers-and-orders`: plays the scripted scenario (default), serves the HTTP API
//! (`serve`), or starts a throwaway PostgreSQL for a two-process setup (`db`). See `--help`
//! and the README.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use customers_and_orders::{App, Role, log, scenario};
use eventuate_core::BoxError;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};

const USAGE: &str = "\
usage:
  customers-and-orders [run] [--in-memory]
      Play the scripted scenario through the HTTP API, print what happened, exit 0 if the
      outcome is as expected. Uses DATABASE_URL, or else starts a throwaway PostgreSQL (or,
      without PostgreSQL binaries, the in-memory store).
  customers-and-orders serve [--role all|customers|orders] [--listen ADDR] [--store-listen ADDR]
                             [--in-memory]
      Serve the HTTP API (default 127.0.0.1:8080) and the event store server over the same
      store (default 127.0.0.1:8081: commands by type name, schemas, the status page), and
      run the subscribers until Ctrl-C.
      `customers` and `orders` are the two halves of the application: run one process of each
      with the same DATABASE_URL.
  customers-and-orders db
      Start a throwaway PostgreSQL, print its DATABASE_URL, and keep it until Ctrl-C.

environment: DATABASE_URL (PostgreSQL to use), LOG (error|warn|info|debug|trace, default warn)";

#[derive(Debug)]
enum Command {
    Run { in_memory: bool },
    Serve(ServeArgs),
    Db,
    Help,
}

#[derive(Debug)]
struct ServeArgs {
    role: Role,
    listen: SocketAddr,
    store_listen: SocketAddr,
    in_memory: bool,
}

fn parse(args: &[String]) -> Result<Command, String> {
    let (command, rest) = match args.first().map(String::as_str) {
        None => ("run", &args[..0]),
        Some(flag) if flag.starts_with('-') => ("run", args),
        Some(command) => (command, &args[1..]),
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") || command == "help" {
        return Ok(Command::Help);
    }
    let mut serve = ServeArgs {
        role: Role::All,
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        store_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
        in_memory: false,
    };
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match (command, arg.as_str()) {
            ("run" | "serve", "--in-memory") => serve.in_memory = true,
            ("serve", "--role") => serve.role = value("--role")?.parse()?,
            ("serve", "--listen") => {
                let addr = value("--listen")?;
                serve.listen = addr.parse().map_err(|e| {
                    format!("--listen `{addr}`: {e} (expected e.g. 127.0.0.1:8080)")
                })?;
            }
            ("serve", "--store-listen") => {
                let addr = value("--store-listen")?;
                serve.store_listen = addr.parse().map_err(|e| {
                    format!("--store-listen `{addr}`: {e} (expected e.g. 127.0.0.1:8081)")
                })?;
            }
            (_, other) => return Err(format!("unexpected argument `{other}` for `{command}`")),
        }
    }
    match command {
        "run" => Ok(Command::Run {
            in_memory: serve.in_memory,
        }),
        "serve" => Ok(Command::Serve(serve)),
        "db" => Ok(Command::Db),
        other => Err(format!("unknown command `{other}`")),
    }
}

fn main() -> ExitCode {
    log::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Command::Help = command {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = None;
    let result = runtime.block_on(async {
        match command {
            Command::Run { in_memory } => run(in_memory, &mut server).await,
            Command::Serve(args) => serve(args, &mut server).await,
            Command::Db => db().await,
            Command::Help => Ok(ExitCode::SUCCESS),
        }
    });
    // The application closed its store; dropping the runtime also ends anything a failed
    // command left behind, before the throwaway server goes away.
    drop(runtime);
    drop(server);
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Opens the application: on DATABASE_URL, else on a throwaway PostgreSQL (kept in
/// `server`), else in memory.
async fn open(
    role: Role,
    in_memory: bool,
    server: &mut Option<ThrowawayPostgres>,
) -> Result<App, BoxError> {
    if in_memory {
        return in_memory_app(role, "--in-memory");
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let app = App::postgres(&url, role).await?;
        println!("store: PostgreSQL at DATABASE_URL");
        return Ok(app);
    }
    if role != Role::All {
        return Err(format!(
            "--role {role} runs one half of the application; point it and the other half at \
             one database with DATABASE_URL (`customers-and-orders db` starts one)"
        )
        .into());
    }
    let started = Instant::now();
    match tokio::task::spawn_blocking(|| ThrowawayPostgres::start(Options::default())).await? {
        Ok(pg) => {
            let app = App::postgres(&pg.url(), role).await?;
            println!(
                "store: a throwaway PostgreSQL at {} (started in {} ms, removed at exit)",
                pg.url(),
                started.elapsed().as_millis()
            );
            *server = Some(pg);
            Ok(app)
        }
        Err(e) => {
            println!("no PostgreSQL to use: {e}");
            in_memory_app(role, "no PostgreSQL")
        }
    }
}

fn in_memory_app(role: Role, why: &str) -> Result<App, BoxError> {
    if role != Role::All {
        return Err(format!("--role {role} needs PostgreSQL (DATABASE_URL): the in-memory store lives in one process").into());
    }
    println!("store: in memory ({why}); the view and the confirmations are in memory too");
    Ok(App::in_memory())
}

async fn run(
    in_memory: bool,
    server: &mut Option<ThrowawayPostgres>,
) -> Result<ExitCode, BoxError> {
    let t0 = Instant::now();
    let app = open(Role::All, in_memory, server).await?;
    let started = app.start()?;
    let mut out = std::io::stdout();
    let outcome = scenario::run(&app, &started, &mut out).await;
    started.running.shutdown().await?;
    app.close().await;
    let outcome = outcome?;
    let verdict = if outcome.as_expected() {
        "as expected"
    } else {
        "NOT as expected"
    };
    println!(
        "\noutcome: orders {:?}, reserved credit {}, {} confirmations, idempotent retry {}: {verdict} \
         (total {} ms)",
        outcome.orders,
        outcome.reserved_credit.as_cents(),
        outcome.confirmations,
        if outcome.retry_returned_same_order {
            "returned the same order"
        } else {
            "created another order"
        },
        t0.elapsed().as_millis()
    );
    Ok(if outcome.as_expected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(
    args: ServeArgs,
    server: &mut Option<ThrowawayPostgres>,
) -> Result<ExitCode, BoxError> {
    let app = open(args.role, args.in_memory, server).await?;
    let started = app.start()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let store_listener = tokio::net::TcpListener::bind(args.store_listen).await?;
    println!(
        "serving role `{}` on http://{}, its event store server on http://{} (Ctrl-C to stop)",
        args.role,
        listener.local_addr()?,
        store_listener.local_addr()?
    );
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    let until_stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    let event_store = app.event_store();
    let (served, store_served) = tokio::join!(
        async {
            let served = axum::serve(listener, started.router.clone())
                .with_graceful_shutdown({
                    let stop = stop.clone();
                    async move {
                        eventuate_core::runtime::shutdown_signal().await;
                        let _ = stop.send(true);
                    }
                })
                .await;
            // Whatever ended the API (a signal or an error) ends the event store server too.
            let _ = stop.send(true);
            served
        },
        event_store.serve(store_listener, until_stopped()),
    );
    store_served?;
    println!("stopping: finishing in-flight events, saving checkpoints");
    // Bounded by the runtime's shutdown timeout: a hung handler is aborted after it.
    let stopped = started.running.shutdown().await;
    app.close().await;
    served?;
    stopped?;
    Ok(ExitCode::SUCCESS)
}

async fn db() -> Result<ExitCode, BoxError> {
    let pg = tokio::task::spawn_blocking(|| ThrowawayPostgres::start(Options::default())).await??;
    println!("DATABASE_URL={}", pg.url());
    println!(
        "(a throwaway PostgreSQL in {}; Ctrl-C stops and removes it)",
        pg.data_dir().display()
    );
    eventuate_core::runtime::shutdown_signal().await;
    drop(pg);
    Ok(ExitCode::SUCCESS)
}
