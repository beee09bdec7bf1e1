//! A throwaway PostgreSQL server started from the server binaries installed on the machine, for
//! tests, examples and benchmarks: `initdb` into a fresh temporary directory, `pg_ctl start` on a
//! free port of 127.0.0.1, trust authentication, removed again when dropped or when the owning
//! process exits.
//!
//! Tests share one server per test binary ([`test_database`]) and get a fresh database each, so
//! they never share mutable state and run in parallel:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let db = eventuate_postgres::embedded::test_database().await;
//! let store = eventuate_postgres::PostgresEventStore::builder()
//!     .migrate_on_connect(true)
//!     .connect(&db.url)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! [`ThrowawayPostgres::start_standby`] adds a hot standby of a server (`pg_basebackup -R`,
//! streaming replication), for tests of readers on a replica.
//!
//! The binaries are searched in `$EVENTUATE_PG_BIN`, then on `PATH`, then in the highest
//! `/usr/lib/postgresql/*/bin`; when the directory found holds links to them, the directory
//! the links point to is used, so that the other tools of the installation are at hand. `initdb` refuses to run as root, so when the process runs as
//! root the server runs as the `postgres` user (or `nobody` when there is no `postgres` user).
//!
//! Why a watchdog: the shared server lives in a static, and statics are never dropped. Each
//! server therefore gets a small shell process in its own process group that blocks reading a
//! pipe held open by this process; when this process exits for any reason (end of the tests,
//! panic, Ctrl-C, `kill -9`) the kernel closes the pipe and the watchdog stops the server and
//! deletes its directory.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;

use crate::{Error, Result};

const INSTALL_HINT: &str = "install them with `apt-get install postgresql` (Debian/Ubuntu), \
     or set EVENTUATE_PG_BIN to the directory that holds initdb, pg_ctl and postgres";

/// How to start a [`ThrowawayPostgres`].
#[derive(Clone, Debug)]
pub struct Options {
    fsync: bool,
    max_connections: u32,
    settings: Vec<(String, String)>,
}

impl Default for Options {
    /// Tuned for tests: no fsync (a crash of the machine loses the data, which is thrown away
    /// anyway), 200 connections.
    fn default() -> Self {
        Options {
            fsync: false,
            max_connections: 200,
            settings: Vec::new(),
        }
    }
}

impl Options {
    /// Whether the server flushes to disk (`fsync`, `full_page_writes`). Off by default; turn
    /// it on to measure durable commits.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// `max_connections` of the server (default 200).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Any other `postgresql.conf` setting, e.g. `setting("shared_buffers", "256MB")`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// A database created on a throwaway server, for one test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestDatabase {
    /// Connection URL, e.g. `postgres://postgres@127.0.0.1:41234/eventuate_test_...`.
    pub url: String,
    /// Database name.
    pub name: String,
}

/// The user the server runs as, when it is not the current one.
#[derive(Copy, Clone, Debug)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A PostgreSQL server in a temporary directory; stopped and deleted on drop.
pub struct ThrowawayPostgres {
    bin_dir: PathBuf,
    root: PathBuf,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    running: Mutex<bool>,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    /// The watchdog's process group, which the server tools join (0 before it exists).
    watchdog_group: std::sync::atomic::AtomicU32,
}

impl fmt::Debug for ThrowawayPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrowawayPostgres")
            .field("bin_dir", &self.bin_dir)
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ThrowawayPostgres {
    /// Creates a cluster in a fresh temporary directory and starts it. Blocks for the
    /// `initdb` and the start (one to a few seconds).
    ///
    /// Fails, with a message saying how to install them, when no server binaries are found.
    pub fn start(options: Options) -> Result<Self> {
        let mut server = Self::prepare(find_bin_dir()?)?;
        server.initdb()?;
        server.start_on_free_port(&options)?;
        Ok(server)
    }

    /// Creates a hot standby of this server and starts it: `pg_basebackup -R` (streaming the
    /// WAL it needs) into a fresh temporary directory, then a server on another free port of
    /// 127.0.0.1 that replays this one's WAL through streaming replication and accepts
    /// read-only connections. Stopped and deleted on drop, like any throwaway server. Blocks
    /// for the base backup and the start (one to a few seconds).
    ///
    /// This server needs nothing more than its defaults: PostgreSQL's default `wal_level`
    /// (`replica`) and `max_wal_senders`, and the `host replication all 127.0.0.1/32` line
    /// that `initdb` writes into `pg_hba.conf` (with trust authentication here). `options`
    /// must keep `max_connections` at least this server's (a hot standby refuses to start
    /// otherwise); the defaults do.
    pub fn start_standby(&self, options: Options) -> Result<Self> {
        let mut standby = Self::prepare(self.bin_dir.clone())?;
        standby.base_backup(self.port)?;
        // `-R` wrote `primary_conninfo` into `postgresql.auto.conf`, which `write_config`
        // rewrites wholesale: give it the setting again. (`-R` also created
        // `standby.signal`, which is what makes the server a standby.)
        let options = options.setting(
            "primary_conninfo",
            format!(
                "host=127.0.0.1 port={} user=postgres application_name=eventuate_standby",
                self.port
            ),
        );
        standby.start_on_free_port(&options)?;
        Ok(standby)
    }

    /// The directory of the server binaries in use (`initdb`, `pg_ctl`, `postgres`, and the
    /// client tools installed next to them: `pg_dump`, `psql`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A server that does not exist yet: a fresh directory owned by the server's user, and
    /// its watchdog.
    fn prepare(bin_dir: PathBuf) -> Result<Self> {
        let run_as = unprivileged_user()?;
        let root = fresh_dir()?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid))
                .map_err(|e| io_error(format!("chown {}", root.display()), e))?;
        }
        let data_dir = root.join("data");
        let server = ThrowawayPostgres {
            bin_dir,
            root,
            data_dir,
            port: 0,
            run_as,
            running: Mutex::new(false),
            watchdog: Mutex::new(None),
            watchdog_group: std::sync::atomic::AtomicU32::new(0),
        };
        // From here on, dropping `server` cleans up; the watchdog covers an abrupt exit.
        server.spawn_watchdog()?;
        Ok(server)
    }

    fn start_on_free_port(&mut self, options: &Options) -> Result<()> {
        let mut last_error = None;
        for _ in 0..5 {
            self.port = free_port()?;
            self.write_config(options)?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                // Another process may have taken the port between our probe and the bind.
                Err(e) if e.to_string().contains("could not bind") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| server_error("start", "no free port found".into())))
    }

    /// The superuser URL of the `postgres` database (trust authentication, no password).
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of a database of this server.
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates a fresh, empty database (from `template0`) with a unique name.
    pub async fn create_database(&self) -> Result<TestDatabase> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "eventuate_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&self.url())
            .await
            .map_err(|source| Error::Connect { source })?;
        // The name is generated above from digits and `_`: safe to splice.
        sqlx::query(&format!("CREATE DATABASE \"{name}\" TEMPLATE template0"))
            .execute(&mut conn)
            .await
            .map_err(|source| Error::Database {
                context: format!("create test database {name}"),
                source,
            })?;
        let _ = conn.close().await;
        Ok(TestDatabase {
            url: self.database_url(&name),
            name,
        })
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: like a crash, recovery runs on
    /// the next start). Open connections fail from now on.
    pub fn stop(&self) -> Result<()> {
        let mut running = lock(&self.running);
        if *running {
            self.pg_ctl(["stop", "-w", "-m", "immediate"])?;
            *running = false;
        }
        Ok(())
    }

    /// Stops the server if it runs, then starts it again on the same port and data directory.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.pg_ctl_start()
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut running = lock(&self.running);
        if *running {
            return Ok(());
        }
        let log = self.root.join("server.log");
        let result = self.pg_ctl([
            OsStr::new("start"),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new("60"),
            OsStr::new("-l"),
            log.as_os_str(),
        ]);
        if let Err(e) = result {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(server_error("start", format!("{e}\nserver log:\n{tail}")));
        }
        *running = true;
        Ok(())
    }

    fn pg_ctl<I, S>(&self, args: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(args);
        run(cmd, "pg_ctl")
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"]);
        run(cmd, "initdb")
    }

    fn base_backup(&self, primary_port: u16) -> Result<()> {
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]);
        run(cmd, "pg_basebackup")
    }

    fn write_config(&self, options: &Options) -> Result<()> {
        let mut conf = String::from("\n# eventuate-postgres throwaway server\n");
        let mut set = |name: &str, value: &str| {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        };
        set("listen_addresses", "127.0.0.1");
        set("port", &self.port.to_string());
        set("unix_socket_directories", &self.root.to_string_lossy());
        set("max_connections", &options.max_connections.to_string());
        if !options.fsync {
            set("fsync", "off");
            set("full_page_writes", "off");
        }
        for (name, value) in &options.settings {
            set(name, value);
        }
        // `postgresql.auto.conf` is read last and rewritten wholesale, so a retry with another
        // port simply replaces the previous attempt's settings.
        let path = self.data_dir.join("postgresql.auto.conf");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error(format!("write {}", path.display()), e))?;
        file.write_all(conf.as_bytes())
            .map_err(|e| io_error(format!("write {}", path.display()), e))?;
        drop(file);
        if let Some(user) = self.run_as {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                .map_err(|e| io_error(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    fn spawn_watchdog(&self) -> Result<()> {
        // `read` returns when the pipe closes, i.e. when this process has exited, or with
        // `done` when the server was dropped and cleaned up in order. Its own process group
        // keeps it out of reach of a terminal's Ctrl-C. `initdb` and `pg_ctl` run in that group
        // too: if this process dies while one of them runs, the watchdog ends it first, so
        // that it cannot recreate the directory or start a server after the clean-up.
        let script = r#"read line
[ "$line" = done ] && exit 0
trap '' TERM
kill -TERM 0 2>/dev/null
sleep 1
"$0" -D "$1" stop -m immediate >/dev/null 2>&1
rm -rf "$2""#;
        let mut cmd = self.as_user(Command::new("sh"));
        cmd.arg("-c")
            .arg(script)
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(&self.data_dir)
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| io_error("spawn the watchdog shell (sh)".into(), e))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| server_error("watchdog", "no stdin pipe".into()))?;
        self.watchdog_group
            .store(child.id(), std::sync::atomic::Ordering::Relaxed);
        *lock(&self.watchdog) = Some((child, stdin));
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = self.as_user(Command::new(self.bin_dir.join(program)));
        let group = self
            .watchdog_group
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Ok(group @ 1..) = i32::try_from(group) {
            cmd.process_group(group);
        }
        cmd
    }

    fn as_user(&self, mut cmd: Command) -> Command {
        // A directory the server's user can read: initdb and postgres refuse to start from a
        // working directory they cannot access.
        cmd.current_dir(&self.root).env("LC_ALL", "C");
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.root);
        if let Some((mut child, mut stdin)) = lock(&self.watchdog).take() {
            // Everything is cleaned up: release the watchdog without its clean-up.
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

static SHARED: OnceLock<ThrowawayPostgres> = OnceLock::new();

/// The server shared by every test of this process, started on first use with the default
/// [`Options`]. Blocks while it starts.
///
/// # Panics
///
/// When the server cannot start (no binaries installed, ...): tests must fail loudly, never
/// skip silently. The message says how to install the binaries.
pub fn shared_server() -> &'static ThrowawayPostgres {
    SHARED.get_or_init(|| match ThrowawayPostgres::start(Options::default()) {
        Ok(server) => server,
        Err(e) => panic!("cannot start the throwaway PostgreSQL server for tests: {e}"),
    })
}

/// A fresh database on the [`shared_server`], for one test.
///
/// # Panics
///
/// When the server cannot start or the database cannot be created.
pub async fn test_database() -> TestDatabase {
    let server = match tokio::task::spawn_blocking(shared_server).await {
        Ok(server) => server,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    match server.create_database().await {
        Ok(db) => db,
        Err(e) => panic!("cannot create a test database: {e}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn server_error(what: &'static str, detail: String) -> Error {
    Error::Server { what, detail }
}

fn io_error(context: String, source: std::io::Error) -> Error {
    Error::Io { context, source }
}

fn run(mut cmd: Command, what: &'static str) -> Result<()> {
    let output: Output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_error(format!("run {what}"), e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(server_error(
            what,
            format!(
                "{} exited with {}: {}{}",
                what,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

fn find_bin_dir() -> Result<PathBuf> {
    let dir = find_bin_dir_in(
        std::env::var_os("EVENTUATE_PG_BIN"),
        std::env::var_os("PATH"),
        Path::new("/usr/lib/postgresql"),
    )?;
    // A directory of links to the server binaries (e.g. `/usr/local/bin/postgres` ->
    // `/usr/lib/postgresql/15/bin/postgres`) may lack the other tools of the installation
    // (`pg_basebackup`, `pg_dump`, `psql`); the directory the links point to has them all, in
    // the same version.
    Ok(fs::canonicalize(dir.join("postgres"))
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
        .filter(|real| has_server_binaries(real))
        .unwrap_or(dir))
}

fn find_bin_dir_in(
    explicit: Option<std::ffi::OsString>,
    path: Option<std::ffi::OsString>,
    debian_root: &Path,
) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        return Err(Error::ServerBinariesNotFound {
            searched: format!("EVENTUATE_PG_BIN={}", dir.display()),
            hint: INSTALL_HINT,
        });
    }
    if let Some(path) = path {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_server_binaries(d)) {
            return Ok(dir);
        }
    }
    // Debian's layout: /usr/lib/postgresql/<major>/bin; take the highest major version.
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir(debian_root) {
        for entry in entries.flatten() {
            let bin = entry.path().join("bin");
            let version = entry
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(version) = version {
                if has_server_binaries(&bin) && best.as_ref().is_none_or(|(b, _)| version > *b) {
                    best = Some((version, bin));
                }
            }
        }
    }
    best.map(|(_, dir)| dir)
        .ok_or_else(|| Error::ServerBinariesNotFound {
            searched: format!("PATH and {}/*/bin", debian_root.display()),
            hint: INSTALL_HINT,
        })
}

/// `None` when the current user can run the server; otherwise the user to run it as.
fn unprivileged_user() -> Result<Option<RunAs>> {
    let uid = match fs::metadata("/proc/self") {
        Ok(meta) => meta.uid(),
        Err(_) => id(&["-u"])?,
    };
    if uid != 0 {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(user) = passwd_entry(name) {
            return Ok(Some(user));
        }
    }
    Err(server_error(
        "initdb",
        "running as root, and initdb refuses root, but there is neither a `postgres` nor a \
         `nobody` user to run the server as; create one (`useradd postgres`)"
            .into(),
    ))
}

fn passwd_entry(name: &str) -> Option<RunAs> {
    let from_file = fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[0] == name {
                Some(RunAs {
                    uid: fields[2].parse().ok()?,
                    gid: fields[3].parse().ok()?,
                })
            } else {
                None
            }
        })
    });
    from_file.or_else(|| {
        Some(RunAs {
            uid: id(&["-u", name]).ok()?,
            gid: id(&["-g", name]).ok()?,
        })
    })
}

fn id(args: &[&str]) -> Result<u32> {
    let output = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| io_error("run id".into(), e))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| server_error("id", format!("`id {}` gave no number", args.join(" "))))
}

fn fresh_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "eventuate-pg-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).map_err(|e| io_error(format!("create {}", dir.display()), e))?;
    Ok(dir)
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| io_error("find a free TCP port".into(), e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| io_error("find a free TCP port".into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_install_them() {
        let nowhere = Path::new("/nonexistent/eventuate");
        for explicit in [None, Some(nowhere.as_os_str().to_owned())] {
            let err = find_bin_dir_in(explicit, Some(nowhere.as_os_str().to_owned()), nowhere)
                .expect_err("no binaries there");
            assert!(matches!(err, Error::ServerBinariesNotFound { .. }));
            assert!(
                err.to_string().contains("apt-get install postgresql"),
                "{err}"
            );
        }
    }

    #[test]
    fn highest_debian_version_wins() {
        let root = fresh_dir().expect("temp dir");
        for version in ["9.6", "13", "15", "notaversion"] {
            let bin = root.join(version).join("bin");
            fs::create_dir_all(&bin).expect("mkdir");
            for b in ["initdb", "pg_ctl", "postgres"] {
                fs::write(bin.join(b), "").expect("touch");
            }
        }
        let found = find_bin_dir_in(None, None, &root).expect("found");
        assert_eq!(found, root.join("15").join("bin"));
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
