//! A private PostgreSQL cluster for one chaos run: `initdb` + `postgres` on a free port in
//! a temp folder, restarted and stopped by the fault schedule, removed afterwards.
//!
//! Private because the run restarts it (`pg_ctl restart -m immediate` would break every
//! other user of a shared server). Run as the `postgres` OS user when we are root, since
//! `initdb` refuses root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// The OS user that owns the cluster when we run as root.
const PG_USER: &str = "postgres";

/// A running private cluster; stopped and removed on drop.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    /// The TCP port it listens on, on 127.0.0.1.
    pub port: u16,
    /// The server options, passed again at each start.
    opts: String,
}

impl Cluster {
    /// Creates and starts a cluster in a new folder under `parent`.
    ///
    /// `fsync=off` is safe here (only an OS crash loses what fsync protects) and keeps a
    /// 2-core machine responsive; `synchronous_commit` stays `on`, because an immediate
    /// restart must not lose a commit that was acknowledged: that is what we test.
    pub fn start(parent: &Path) -> anyhow::Result<Cluster> {
        let bin = find_pg_bin().context(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in /usr/lib/postgresql/*/bin",
        )?;
        let dir = parent.join("pg");
        fs::create_dir_all(&dir).with_context(|| format!("create {dir:?}"))?;
        if is_root() {
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{PG_USER}:"))
                .arg(parent))?;
        }
        let port = free_port()?;
        let opts = format!(
            "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=on \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB",
            dir.display()
        );
        let cluster = Cluster {
            bin,
            dir,
            port,
            opts,
        };
        let data = cluster.data();
        cluster.pg(&[
            "initdb",
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ])?;
        cluster.start_again()?;
        Ok(cluster)
    }

    /// The URL of database `postgres` (the run uses it; nothing else lives here).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m MODE`: `fast` disconnects clients and checkpoints; `immediate`
    /// kills the server outright, and start-up then runs crash recovery.
    pub fn restart(&self, mode: &str) -> anyhow::Result<()> {
        // `-l` again: without it the new server would write to our pipe and keep it open.
        let log = self.dir.join("log").display().to_string();
        self.pg_ctl(&["restart", "-w", "-t", "60", "-m", mode, "-l", &log])
    }

    /// Stops the server (an outage begins).
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode])
    }

    /// Starts it (again, after [`Cluster::stop`]: an outage ends).
    pub fn start_again(&self) -> anyhow::Result<()> {
        let log = self.dir.join("log").display().to_string();
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log, "-o", &self.opts])
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let data = self.data();
        let mut argv = vec!["pg_ctl", "-D", &data];
        argv.extend_from_slice(args);
        self.pg(&argv)
    }

    /// Runs a PostgreSQL tool as the cluster's OS user.
    fn pg(&self, argv: &[&str]) -> anyhow::Result<()> {
        let tool = self.bin.join(argv[0]).display().to_string();
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--", &tool]);
            c
        } else {
            Command::new(&tool)
        };
        cmd.args(&argv[1..]).current_dir(&self.dir);
        run(&mut cmd)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Stops the clusters and removes the folders that runs left under `parent` when their
/// harness died without cleaning up (its pid, in the folder's name, is gone).
pub fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("forklift-chaos-")
            .and_then(|rest| rest.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = entry.path().join("pg/data");
        if data.join("postmaster.pid").exists()
            && let Some(bin) = find_pg_bin()
        {
            let pg_ctl = bin.join("pg_ctl").display().to_string();
            let data = data.display().to_string();
            let argv = [pg_ctl.as_str(), "stop", "-m", "immediate", "-D", &data];
            let mut cmd = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", PG_USER, "--"]).args(argv);
                c
            } else {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            };
            let _ = run(&mut cmd);
        }
        let _ = fs::remove_dir_all(entry.path().join("pg"));
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A port nobody listens on right now (bound and released; a race is unlikely on loopback).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A folder with initdb, pg_ctl and postgres: on PATH, else the newest /usr/lib/postgresql/*/bin.
fn find_pg_bin() -> Option<PathBuf> {
    let installed = fs::read_dir("/usr/lib/postgresql").into_iter().flatten();
    let mut installed: Vec<PathBuf> = installed.flatten().map(|e| e.path().join("bin")).collect();
    installed.sort_by_key(|bin| {
        std::cmp::Reverse(bin.parent().and_then(|p| {
            p.file_name()?
                .to_str()?
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()
        }))
    });
    let path = std::env::var_os("PATH").unwrap_or_default();
    let has_all = |d: &PathBuf| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    std::env::split_paths(&path).chain(installed).find(has_all)
}

/// Waits until `url` accepts connections, for up to `limit`.
pub async fn wait_ready(url: &str, limit: Duration) -> anyhow::Result<()> {
    use sqlx::Connection;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(c) => {
                let _ = c.close().await;
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e).context("the cluster did not accept connections");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
