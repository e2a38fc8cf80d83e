//! Test support for the integration tests of the forklift crates: each test gets its own
//! fresh, empty PostgreSQL schema on a real server, so tests can run in parallel, or a
//! database of its own behind PgBouncer ([`fresh_pooled_database`]).

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::OnceCell;

mod pgbouncer;

pub use pgbouncer::{PGBOUNCER_POOL_SIZE, PooledDatabase, fresh_pooled_database};

/// The OS user that runs the throwaway cluster when we are root (initdb refuses root).
const PG_USER: &str = "postgres";

/// Resolves the PostgreSQL server the tests use, once per process.
///
/// So that tests run anywhere without setup, in order: the `DATABASE_URL` env var;
/// `postgres://postgres@127.0.0.1:5432/test` if it answers within 2 s (probed address
/// overridable with `FORKLIFT_TEST_PG_PROBE`); else a throwaway cluster in
/// `$TMPDIR/forklift-testpg-<uid>`, shared by all test processes of this user (cargo test and
/// nextest run many) and removed once unused for `FORKLIFT_TEST_PG_IDLE_SECS` (90) seconds.
/// Panics with what was tried when none of these works.
pub async fn database_url() -> String {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(resolve_url).await.clone()
}

/// A new, empty schema and ways to connect to it.
pub struct TestSchema {
    /// Up to 10 connections, each with `search_path` set to [`TestSchema::name`] only.
    pub pool: PgPool,
    /// `fl_t_<unix seconds>_<8 random hex>`: the timestamp lets later runs drop leftovers.
    pub name: String,
    /// A URL whose connections also use only this schema (percent-encoded
    /// `options=-c search_path=...`), for `PgConnectOptions::from_str` or a child process.
    pub url: String,
}

impl TestSchema {
    /// Options for connecting to this schema yourself, e.g. for a pool with other settings.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.url).expect("TestSchema::url is a valid postgres URL")
    }
}

/// A pool whose connections all use a new, empty schema (search_path set to it), so tests can
/// run in parallel, each with their own tables.
///
/// Schemas are not dropped when the test ends (so a failure can be inspected); instead the
/// first call in each process drops `fl_t_*` schemas older than 3 hours.
pub async fn fresh_schema() -> TestSchema {
    static CLEANED: AtomicBool = AtomicBool::new(false);
    let base = database_url().await;
    let name = create_fresh(&SCHEMA, &CLEANED).await;
    let options = PgConnectOptions::from_str(&base).unwrap_or_else(|e| panic!("{base}: {e}"));
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.options([("search_path", &name)]))
        .await
        .unwrap_or_else(|e| panic!("cannot open a pool on schema {name}: {e}"));
    // The name is [a-z0-9_] only, so just "-c search_path=" needs percent-encoding.
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
    TestSchema { pool, name, url }
}

/// A kind of object made fresh for each test: its name is `<prefix><unix seconds>_<8 random
/// hex>`, the timestamp letting later runs drop leftovers older than `max_age_secs`.
struct Fresh {
    prefix: &'static str,
    /// Lists the objects' names (`LIKE` the prefix).
    list: &'static str,
    /// `{}` is the name.
    create: &'static str,
    drop: &'static str,
    max_age_secs: u64,
}

const SCHEMA: Fresh = Fresh {
    prefix: "fl_t_",
    list: r"SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'fl\_t\_%'",
    create: r#"CREATE SCHEMA "{}""#,
    drop: r#"DROP SCHEMA IF EXISTS "{}" CASCADE"#,
    max_age_secs: 3 * 3600,
};

/// Makes a new object of `kind` and returns its name; the first call in a process (per
/// `cleaned`) first drops those over the kind's age. Drop errors are ignored: other test
/// processes may be dropping the same objects right now.
async fn create_fresh(kind: &Fresh, cleaned: &AtomicBool) -> String {
    let base = database_url().await;
    let mut admin = PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("{base}: {e}"));
    if !cleaned.swap(true, Ordering::SeqCst) {
        let names: Vec<String> = sqlx::query_scalar(kind.list)
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
        let cutoff = unix_secs().saturating_sub(kind.max_age_secs);
        for name in names {
            let created = name.split('_').nth(2).and_then(|t| t.parse::<u64>().ok());
            if created.is_some_and(|t| t < cutoff) {
                let _ = admin.execute(kind.drop.replace("{}", &name).as_str()).await;
            }
        }
    }
    let random = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{}{}_{}", kind.prefix, unix_secs(), &random[..8]);
    let create = kind.create.replace("{}", &name);
    admin
        .execute(create.as_str())
        .await
        .unwrap_or_else(|e| panic!("{create}: {e}"));
    let _ = admin.close().await;
    name
}

async fn resolve_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
        assert!(ok, "DATABASE_URL must be a postgres:// URL, got {url:?}");
        return url;
    }
    let probe = env_or("FORKLIFT_TEST_PG_PROBE", "127.0.0.1:5432");
    let url = format!("postgres://postgres@{probe}/test");
    if answers(&url).await {
        return url;
    }
    tracing::info!("no PostgreSQL at {probe}; using a throwaway cluster");
    throwaway_cluster(&probe).await
}

/// Whether a connection to `url` succeeds within 2 s.
async fn answers(url: &str) -> bool {
    let connect = tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url));
    match connect.await {
        Ok(Ok(conn)) => conn.close().await.is_ok(),
        _ => false,
    }
}

/// Reuses the shared throwaway cluster if it answers, else starts it, holding the lock.
async fn throwaway_cluster(probe: &str) -> String {
    let dir = std::env::temp_dir().join(format!("forklift-testpg-{}", euid()));
    let _lock = blocking({
        let dir = dir.clone();
        move || lock_dir(&dir)
    })
    .await;
    // Touched under the lock, so a reaper waiting for the lock sees that we are here.
    touch(&dir.join("heartbeat"));
    let url = |port: &str, db: &str| format!("postgres://postgres@127.0.0.1:{port}/{db}");
    if let Ok(port) = fs::read_to_string(dir.join("port"))
        && answers(&url(port.trim(), "test")).await
    {
        start_heartbeat(dir);
        return url(port.trim(), "test");
    }
    let (d, probe) = (dir.clone(), probe.to_string());
    let port = blocking(move || start_cluster(&d, &probe)).await;
    let create_db = async {
        let mut admin = PgConnection::connect(&url(&port, "postgres")).await?;
        admin.execute("CREATE DATABASE test").await?;
        admin.close().await
    };
    let created = create_db.await;
    created.unwrap_or_else(|e| panic!("throwaway cluster in {dir:?}: CREATE DATABASE test: {e}"));
    // Recorded only now, so a half-started cluster is never reused.
    fs::write(dir.join("port"), &port).expect("cannot record the cluster's port");
    start_heartbeat(dir);
    url(&port, "test")
}

/// Runs blocking work (processes, file locks) off the async runtime, re-raising its panics.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let result = tokio::task::spawn_blocking(f).await;
    result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Creates `dir` and takes the inter-process lock `dir/lock`. The reaper removes the folder
/// while holding the lock, so once we hold it we check that our lock file is still the one in
/// the folder, and start over if not.
fn lock_dir(dir: &Path) -> File {
    loop {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
        if euid() == 0 {
            // The cluster and the reaper run as `postgres`, which must be able to write here.
            let mut chown = Command::new("chown");
            run(chown.arg(format!("{PG_USER}:")).arg(dir), "chown");
        }
        let path = dir.join("lock");
        let file = File::options().create(true).append(true).open(&path);
        let file = file.unwrap_or_else(|e| panic!("cannot open {path:?}: {e}"));
        file.lock()
            .unwrap_or_else(|e| panic!("cannot lock {path:?}: {e}"));
        if fs::metadata(&path).is_ok_and(|m| m.ino() == file.metadata().unwrap().ino()) {
            return file;
        }
    }
}

/// Initialises and starts a new cluster in `dir` (we hold the lock); returns its port.
fn start_cluster(dir: &Path, probe: &str) -> String {
    let bin = find_pg_bin().unwrap_or_else(|| {
        let _ = fs::remove_dir_all(dir); // Nothing to reap later; others re-check the lock.
        panic!(
            "no PostgreSQL at {probe} and initdb not found (on PATH or in \
             /usr/lib/postgresql/*/bin); install PostgreSQL server binaries or set DATABASE_URL"
        )
    });
    let tool = |name: &str| bin.join(name).to_string_lossy().into_owned();
    let (pg_ctl, initdb) = (tool("pg_ctl"), tool("initdb"));
    let d = dir.to_str().expect("the temp dir's path is not UTF-8");
    let (data, log) = (format!("{d}/data"), format!("{d}/log"));
    if Path::new(&data).exists() {
        // Leftovers of a cluster that does not answer: stop it if it still runs, start over.
        let stop = [&*pg_ctl, "stop", "-m", "immediate", "-D", &data];
        let _ = cluster_cmd(dir, &[], &stop).output();
        fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("cannot remove {data}: {e}"));
    }
    // Started first, so it also cleans up if a step below fails (no heartbeat follows then).
    // `setsid -f`: its own session and no inherited stdio, so test runners neither kill it
    // with their process group nor wait for it to close their output pipes.
    let idle = env_or("FORKLIFT_TEST_PG_IDLE_SECS", "90");
    let argv = ["sh", "-c", REAPER, "reaper", d, &idle, &pg_ctl];
    let mut reaper = cluster_cmd(dir, &["setsid", "-f"], &argv);
    reaper.stdout(Stdio::null()).stderr(Stdio::null());
    run(&mut reaper, "setsid (reaper)");

    // --no-locale: do not depend on which locales the machine has.
    let flags = "-U postgres -A trust --no-sync -E UTF8 --no-locale".split(' ');
    let init: Vec<&str> = [&*initdb, "-D", &data].into_iter().chain(flags).collect();
    run(&mut cluster_cmd(dir, &[], &init), "initdb");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let port = port.expect("no free TCP port").port().to_string();
    let opts = format!(
        "-p {port} -k '{d}' -c listen_addresses=127.0.0.1 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
    );
    let mut start = vec![&*pg_ctl, "start", "-w", "-D", &data];
    start.extend(["-l", &log, "-o", &opts]);
    let what = format!("pg_ctl start (see {log})");
    run(&mut cluster_cmd(dir, &[], &start), &what);
    port
}

/// The reaper, `sh -c REAPER reaper DIR IDLE_SECS PG_CTL`: once the heartbeat is older than
/// IDLE_SECS it takes the lock (so no process attaches meanwhile), checks again, stops the
/// cluster and removes the folder. It exits once the folder is gone.
const REAPER: &str = r#"
idle() { echo $(( $(date +%s) - $(stat -c %Y "$1/heartbeat" 2>/dev/null || echo 0) )); }
while sleep 5; do
  [ -d "$1" ] || exit 0
  [ "$(idle "$1")" -gt "$2" ] || continue
  exec 9<"$1/lock"
  flock 9
  if [ "$(idle "$1")" -gt "$2" ]; then
    "$3" stop -m fast -D "$1/data" >/dev/null 2>&1
    rm -rf "$1"
    exit 0
  fi
  exec 9<&-
done
"#;

/// Keeps `dir/heartbeat` fresh while this process lives, so the reaper leaves the cluster be.
fn start_heartbeat(dir: PathBuf) {
    let idle = env_or("FORKLIFT_TEST_PG_IDLE_SECS", "90");
    let idle: u64 = idle.parse().unwrap_or(90);
    let every = Duration::from_secs((idle / 3).clamp(1, 10));
    std::thread::spawn(move || {
        loop {
            touch(&dir.join("heartbeat"));
            std::thread::sleep(every);
        }
    });
}

fn touch(path: &Path) {
    let file = File::options().create(true).append(true).open(path);
    let _ = file.and_then(|f| f.set_modified(SystemTime::now()));
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn unix_secs() -> u64 {
    UNIX_EPOCH.elapsed().unwrap().as_secs()
}

/// Our effective uid, read from /proc/self/status (no libc dependency), else from `id -u`.
fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    let euid = uids.and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    euid.or_else(|| {
        let out = Command::new("id").arg("-u").output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    })
    .expect("cannot determine the current uid")
}

/// `argv` run as the cluster's OS user (ourselves, or `postgres` when we are root), behind
/// `outer` (which runs as us).
fn cluster_cmd(dir: &Path, outer: &[&str], argv: &[&str]) -> Command {
    let exists = |p: &&&str| Path::new(p).exists();
    let runuser = ["/usr/sbin/runuser", "/sbin/runuser"].iter().find(exists);
    let quote = |a: &&str| format!("'{}'", a.replace('\'', r"'\''"));
    let script = argv.iter().map(quote).collect::<Vec<_>>().join(" ");
    let argv = match (euid(), runuser) {
        (0, Some(runuser)) => [&[*runuser, "-u", PG_USER, "--"][..], argv].concat(),
        (0, None) => vec!["su", PG_USER, "-s", "/bin/sh", "-c", &script],
        _ => argv.to_vec(),
    };
    let argv = [outer, &argv].concat();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).current_dir(dir).stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion, panicking with its output if it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output();
    let out = out.unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}"));
    if !out.status.success() {
        let output = [out.stdout, out.stderr].concat();
        let output = String::from_utf8_lossy(&output);
        panic!("{what} failed ({}): {cmd:?}\n{output}", out.status);
    }
}

/// A folder with initdb, pg_ctl and postgres: on PATH, else the newest /usr/lib/postgresql/*/bin.
fn find_pg_bin() -> Option<PathBuf> {
    let installed = fs::read_dir("/usr/lib/postgresql").into_iter().flatten();
    let mut installed: Vec<PathBuf> = installed.flatten().map(|e| e.path().join("bin")).collect();
    installed.sort_by_key(|bin| std::cmp::Reverse(major_version(bin)));
    let path = std::env::var_os("PATH").unwrap_or_default();
    const TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
    let has_all = |d: &PathBuf| TOOLS.iter().all(|b| d.join(b).is_file());
    std::env::split_paths(&path).chain(installed).find(has_all)
}

/// 16 for /usr/lib/postgresql/16/bin, 9 for .../9.6/bin.
fn major_version(bin: &Path) -> Option<u32> {
    let version = bin.parent()?.file_name()?.to_str()?;
    version.split('.').next()?.parse().ok()
}
