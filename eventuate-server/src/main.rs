//! `eventuate-server`: serves the REST API on `DATABASE_URL`, or on a throwaway PostgreSQL,
//! and with `--relay` relays the stream to a broker (see `relay`).

mod relay;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use eventuate_core::{BoxError, Eventuate};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
use eventuate_server::{Server, ServerOptions, StompOptions};
use relay::{RelayArgs, RelayConfig};

/// The `--help` text, with the limits' defaults as [`ServerOptions::default`] has them.
fn usage() -> String {
    let defaults = ServerOptions::default();
    let body_limit = defaults.body_limit;
    format!(
        "\
usage: eventuate-server [--listen ADDR] [--stomp-listen ADDR] [--schema NAME] [--max-connections N]
                        [--body-limit BYTES] [--request-timeout-ms MS] [--idle-timeout-ms MS]
                        [--relay URL --relay-types T1,T2 [--relay-prefix P | --relay-topic NAME]
                         [--relay-id ID]]

Serves the event store's REST API (GET /openapi.json describes it) and its STOMP
subscriptions until Ctrl-C, on the PostgreSQL at DATABASE_URL, or else on a throwaway
PostgreSQL removed at exit.

  --listen ADDR        HTTP address (default 127.0.0.1:8080; env EVENTUATE_LISTEN)
  --stomp-listen ADDR  STOMP address (default 127.0.0.1:61614; env EVENTUATE_STOMP_LISTEN)
  --schema NAME        schema of the store (default public; env EVENTUATE_SCHEMA)

Limits of the HTTP listener:
  --max-connections N  HTTP connections served at once (default {max_connections}); more wait
                       in the kernel's backlog. Neither the PostgreSQL connection pool nor
                       STOMP sessions (their own cap, {stomp}, counts those over WebSocket too)
  --body-limit BYTES   largest request body (default {body_limit}, {body_mib} MiB); a larger one
                       is answered 413 `payload_too_large`
  --request-timeout-ms MS
                       longest a request may take before it is answered 503 `timeout`
                       (default {request_timeout})
  --idle-timeout-ms MS a connection with no traffic for this long is closed; also the time a
                       client has to send a request's headers (default {idle_timeout})

Relay (a durable subscriber publishing each event, at least once, in entity order):
  --relay URL          nats://host:port (NATS JetStream; the stream capturing the subjects
                       must exist) or kafka://host:port[,host:port] (a server built with
                       --features kafka) (env EVENTUATE_RELAY)
  --relay-types LIST   entity types to relay, comma-separated; required with --relay
                       (env EVENTUATE_RELAY_TYPES)
  --relay-prefix P     one subject or topic per entity type, P<entity type> (default
                       `events.`; env EVENTUATE_RELAY_PREFIX)
  --relay-topic NAME   one subject or topic for every event instead (env EVENTUATE_RELAY_TOPIC)
  --relay-id ID        the relay's subscriber id: its checkpoint, parked events and status
                       (default relay; env EVENTUATE_RELAY_ID)

environment: DATABASE_URL, EVENTUATE_LISTEN, EVENTUATE_STOMP_LISTEN, EVENTUATE_SCHEMA,
EVENTUATE_RELAY, EVENTUATE_RELAY_TYPES, EVENTUATE_RELAY_PREFIX, EVENTUATE_RELAY_TOPIC,
EVENTUATE_RELAY_ID",
        max_connections = defaults.max_connections,
        stomp = StompOptions::default().max_connections,
        body_mib = body_limit as f64 / f64::from(1 << 20),
        request_timeout = millis(defaults.request_timeout),
        idle_timeout = millis(defaults.idle_timeout),
    )
}

/// `30000, 30 s`.
fn millis(duration: Duration) -> String {
    format!("{}, {} s", duration.as_millis(), duration.as_secs_f64())
}

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    stomp_listen: SocketAddr,
    schema: String,
    options: ServerOptions,
    relay: Option<RelayConfig>,
}

fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let env_listen = std::env::var("EVENTUATE_LISTEN").ok();
    let mut listen = env_listen.unwrap_or_else(|| "127.0.0.1:8080".into());
    let mut stomp_listen =
        std::env::var("EVENTUATE_STOMP_LISTEN").unwrap_or_else(|_| "127.0.0.1:61614".into());
    let mut schema = std::env::var("EVENTUATE_SCHEMA").unwrap_or_else(|_| "public".into());
    let mut options = ServerOptions::default();
    let mut relay = RelayArgs::from_env();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .map_err(|e| format!("{name} `{text}`: {e}"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => listen = value("--listen")?,
            "--stomp-listen" => stomp_listen = value("--stomp-listen")?,
            "--schema" => schema = value("--schema")?,
            "--relay" => relay.url = Some(value("--relay")?),
            "--relay-types" => relay.types = Some(value("--relay-types")?),
            "--relay-prefix" => relay.prefix = Some(value("--relay-prefix")?),
            "--relay-topic" => relay.topic = Some(value("--relay-topic")?),
            "--relay-id" => relay.id = Some(value("--relay-id")?),
            "--max-connections" => {
                let n = number("--max-connections", value("--max-connections")?)?;
                options.max_connections = usize::try_from(n).unwrap_or(usize::MAX).max(1);
            }
            "--body-limit" => {
                let n = number("--body-limit", value("--body-limit")?)?;
                options.body_limit = usize::try_from(n).unwrap_or(usize::MAX);
            }
            "--request-timeout-ms" => {
                let n = number("--request-timeout-ms", value("--request-timeout-ms")?)?;
                options.request_timeout = Duration::from_millis(n.max(1));
            }
            "--idle-timeout-ms" => {
                let n = number("--idle-timeout-ms", value("--idle-timeout-ms")?)?;
                options.idle_timeout = Duration::from_millis(n.max(1));
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("listen address `{listen}`: {e} (expected e.g. 127.0.0.1:8080)"))?;
    let stomp_listen = stomp_listen.parse().map_err(|e| {
        format!("STOMP listen address `{stomp_listen}`: {e} (expected e.g. 127.0.0.1:61614)")
    })?;
    Ok(Some(Args {
        listen,
        stomp_listen,
        schema,
        options,
        relay: relay.check()?,
    }))
}

/// Logs to stderr what `RUST_LOG` lets through: `info` when it is unset; otherwise a
/// default level and `target=level` pairs (`warn,eventuate_core=debug`).
fn install_logging() -> Result<(), String> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            directives.parse::<Targets>().map_err(|e| {
                format!("RUST_LOG `{directives}` is not `level` or `target=level` pairs: {e}")
            })?
        }
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init()
        .map_err(|e| format!("cannot install the log: {e}"))
}

fn main() -> ExitCode {
    if let Err(e) = install_logging() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
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
    let result = runtime.block_on(run(args, &mut server));
    drop(runtime);
    // The throwaway server (if any) goes last, after every connection to it is closed.
    drop(server);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `address`; the error names the flag and the address (two listeners, one message).
async fn bind(address: SocketAddr, flag: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} ({flag}): {e}"))
}

async fn run(args: Args, server: &mut Option<ThrowawayPostgres>) -> Result<(), BoxError> {
    // First, so that a taken port fails at once, before a throwaway PostgreSQL starts or the
    // store migrates; connections that arrive meanwhile wait in the backlog.
    let listener = bind(args.listen, "--listen").await?;
    let stomp_listener = bind(args.stomp_listen, "--stomp-listen").await?;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            println!(
                "store: PostgreSQL at DATABASE_URL, schema `{}`",
                args.schema
            );
            url
        }
        Err(_) => {
            let pg = tokio::task::spawn_blocking(|| ThrowawayPostgres::start(Options::default()))
                .await?
                .map_err(|e| {
                    format!("no DATABASE_URL, and no throwaway PostgreSQL could be started: {e}")
                })?;
            let url = pg.url();
            println!("store: a throwaway PostgreSQL at {url} (removed at exit)");
            *server = Some(pg);
            url
        }
    };
    let store = PostgresEventStore::builder()
        .schema(args.schema)
        .migrate_on_connect(true)
        .connect(&url)
        .await?;
    // No subscribers of its own but the relay, if any: the runtime serves the operations
    // routes (a process that registers subscribers embeds the server with its own runtime
    // instead).
    // The recorder before the runtime, whose lease manager takes partitions at once.
    if let Err(e) = eventuate_server::install_prometheus() {
        eprintln!("GET /metrics is not served: {e}");
    }
    let mut eventuate = Eventuate::new(store.clone());
    if let Some(relay) = args.relay {
        println!("{}", relay.describe());
        eventuate = relay.register(eventuate).await?;
    }
    let running = Arc::new(eventuate.start()?);
    let http = Server::new(Arc::new(store.clone()))
        .operations(running.clone())
        .postgres_admin(store.clone())
        .options(args.options);
    let stomp = http.stomp(Arc::new(store.clone()));
    let http = http.stomp_over_websocket(&stomp);
    println!(
        "serving the event store on http://{} (GET /openapi.json) and STOMP on {} (Ctrl-C to stop)",
        listener.local_addr()?,
        stomp_listener.local_addr()?
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        eventuate_core::runtime::shutdown_signal().await;
        stop.send_replace(true);
    });
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let (served, stomp_served) = tokio::join!(
        http.serve(listener, until_stopped()),
        stomp.serve(stomp_listener, until_stopped())
    );
    drop(http);
    drop(stomp);
    if let Ok(running) = Arc::try_unwrap(running) {
        running.shutdown().await?;
    }
    store.close().await;
    served?;
    stomp_served?;
    Ok(())
}
