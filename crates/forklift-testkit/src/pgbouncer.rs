//! PgBouncer in transaction pooling mode in front of the test PostgreSQL, for the tests
//! that check Forklift behind a pooler: one per test process, with a database per test.
//!
//! A pooler passes no startup options, so a test's `search_path` cannot pick a schema:
//! each test gets a database of its own instead, reached through PgBouncer's fallback
//! entry (`* =`). PgBouncer is Debian's (`pgbouncer`, 1.18 on bookworm); when it is not
//! installed and we are root, it is installed with apt-get, once, under a lock.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::OnceCell;

use crate::{Fresh, TestSchema, blocking, cluster_cmd, create_fresh, database_url, euid, run};

/// Server connections PgBouncer keeps per database (`max_db_connections`): a test that
/// occupies them all sees what waits at the pooler.
pub const PGBOUNCER_POOL_SIZE: usize = 5;

/// A fresh database reached two ways: straight (for LISTEN and the tests' own SQL) and
/// through PgBouncer.
pub struct PooledDatabase {
    /// The database without the pooler: `pool` (2 connections, for the tests' own SQL),
    /// `url` and `name` (`public`, its schema).
    pub direct: TestSchema,
    /// The same database through PgBouncer in `pool_mode = transaction`.
    pub pooled: PgConnectOptions,
}

/// A new, empty database and PgBouncer in front of it (started once per process).
///
/// Databases are not dropped when the test ends (PgBouncer still holds its connections
/// then); the first call in each process drops `fl_d_*` databases over 10 minutes old.
pub async fn fresh_pooled_database() -> PooledDatabase {
    static CLEANED: AtomicBool = AtomicBool::new(false);
    let base = database_url().await;
    let port = pgbouncer_port().await;
    let name = create_fresh(&DATABASE, &CLEANED).await;
    let direct_options = PgConnectOptions::from_str(&base)
        .unwrap_or_else(|e| panic!("{base}: {e}"))
        .database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(direct_options.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot open a pool on database {name}: {e}"));
    let pooled = direct_options.clone().host("127.0.0.1").port(port);
    let (head, _) = base.rsplit_once('/').expect("a database URL has a path");
    let direct = TestSchema {
        pool,
        name: "public".into(),
        url: format!("{head}/{name}"),
    };
    PooledDatabase { direct, pooled }
}

/// Test databases: dropped once over 10 minutes old (no test runs that long), with `FORCE`,
/// which closes the idle connections PgBouncer may still keep to them.
const DATABASE: Fresh = Fresh {
    prefix: "fl_d_",
    list: r"SELECT datname::text FROM pg_database WHERE datname LIKE 'fl\_d\_%'",
    create: r#"CREATE DATABASE "{}""#,
    drop: r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
    max_age_secs: 600,
};

/// The port of this process's PgBouncer, started on first use.
async fn pgbouncer_port() -> u16 {
    static PORT: OnceCell<u16> = OnceCell::const_new();
    *PORT
        .get_or_init(|| async {
            let upstream = PgConnectOptions::from_str(&database_url().await)
                .expect("the test database URL parses");
            blocking(move || start_pgbouncer(&upstream)).await
        })
        .await
}

/// Starts PgBouncer on a free port: the port is free when chosen but may be taken before
/// PgBouncer binds it (another test process), so a start that does not say it listens on
/// it is tried again on another.
fn start_pgbouncer(upstream: &PgConnectOptions) -> u16 {
    let bin = pgbouncer_bin();
    for attempt in 1.. {
        match try_start(&bin, upstream) {
            Ok(port) => return port,
            Err(log) if attempt < 5 => tracing::warn!("PgBouncer did not start; again:\n{log}"),
            Err(log) => panic!("PgBouncer did not start in 5 attempts; its last log:\n{log}"),
        }
    }
    unreachable!()
}

/// Writes a configuration and starts PgBouncer as the cluster's OS user (it refuses to
/// run as root), with a watchdog that stops it once this process is gone. Its log when it
/// does not listen within 5 s.
fn try_start(bin: &Path, upstream: &PgConnectOptions) -> Result<u16, String> {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!(
        "forklift-pgbouncer-{}-{}",
        std::process::id(),
        &random[..8]
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    if euid() == 0 {
        run(Command::new("chown").arg("postgres:").arg(&dir), "chown");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let port = port.expect("no free TCP port").port();
    let host = match upstream.get_host() {
        "localhost" => "127.0.0.1",
        host => host,
    };
    // A small pool per database, closed soon after use: every test has a database of its
    // own, and their pools together must stay under the server's max_connections.
    let config = format!(
        "[databases]\n\
         * = host={host} port={upstream_port} user={user}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = any\n\
         pool_mode = transaction\n\
         ignore_startup_parameters = extra_float_digits\n\
         max_client_conn = 2000\n\
         default_pool_size = {PGBOUNCER_POOL_SIZE}\n\
         max_db_connections = {PGBOUNCER_POOL_SIZE}\n\
         server_idle_timeout = 2\n\
         logfile = {log}\n\
         pidfile = {pid}\n",
        upstream_port = upstream.get_port(),
        user = upstream.get_username(),
        log = dir.join("log").display(),
        pid = dir.join("pid").display(),
    );
    let ini = dir.join("pgbouncer.ini");
    fs::write(&ini, config).unwrap_or_else(|e| panic!("cannot write {ini:?}: {e}"));
    let d = dir.to_str().expect("the temp dir's path is not UTF-8");
    let parent = std::process::id().to_string();
    let argv = [
        "sh",
        "-c",
        WATCHDOG,
        "watchdog",
        &parent,
        bin.to_str().expect("pgbouncer's path is UTF-8"),
        ini.to_str().expect("UTF-8 path"),
        d,
    ];
    let mut watchdog = cluster_cmd(&dir, &["setsid", "-f"], &argv);
    watchdog.stdout(Stdio::null()).stderr(Stdio::null());
    run(&mut watchdog, "setsid (pgbouncer)");
    // Its own log saying so, not a connection: another process's listener could answer.
    let listening = format!("listening on 127.0.0.1:{port}");
    // The watchdog removes the folder once PgBouncer exits: keep the last log read.
    let mut last_log = String::new();
    for _ in 0..100 {
        let log = fs::read_to_string(dir.join("log")).unwrap_or_default();
        if log.contains(&listening) {
            return Ok(port);
        }
        if !log.is_empty() {
            last_log = log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still starting after 5 s: stop it before trying another port.
    if let Ok(pid) = fs::read_to_string(dir.join("pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    Err(last_log)
}

/// `sh -c WATCHDOG watchdog PARENT_PID PGBOUNCER INI DIR`: runs PgBouncer until the test
/// process is gone (seen in /proc: as another user, `kill -0` could not tell), then stops
/// it and removes its folder.
const WATCHDOG: &str = r#"
"$2" "$3" &
child=$!
while [ -d "/proc/$1" ] && kill -0 "$child" 2>/dev/null; do sleep 1; done
kill "$child" 2>/dev/null
wait "$child"
rm -rf "$4"
"#;

/// PgBouncer's binary: on PATH or in /usr/sbin; else installed with apt-get when we are
/// root (Debian's package), once across test processes.
fn pgbouncer_bin() -> PathBuf {
    let find = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|d| d.join("pgbouncer"))
            .find(|p| p.is_file())
    };
    if let Some(bin) = find() {
        return bin;
    }
    assert!(
        euid() == 0,
        "PgBouncer is not installed: install Debian's `pgbouncer` package (apt-get install pgbouncer)"
    );
    let lock = File::options()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join("forklift-apt.lock"))
        .and_then(|f| f.lock().map(|_| f))
        .expect("cannot take the apt lock file");
    if find().is_none() {
        let install = "apt-get install -y -q -o DPkg::Lock::Timeout=120 pgbouncer \
            || (apt-get update -q && apt-get install -y -q -o DPkg::Lock::Timeout=120 pgbouncer)";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", install])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        run(&mut cmd, "apt-get install pgbouncer");
    }
    drop(lock);
    find().expect("pgbouncer is installed but not found in /usr/sbin or on PATH")
}
