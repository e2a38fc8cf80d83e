//! The built `forklift` binary: tenants, serve, enqueue --wait, graceful SIGTERM, and
//! clear messages (not backtraces) when something is wrong.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_forklift");

fn forklift(db_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let answer = http.get(url).send().await.unwrap();
    answer.json().await.unwrap()
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(db_url: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args(["serve", "--listen", &listen])
            .args(extra)
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, url }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_create_serve_enqueue_wait_and_sigterm() {
    let schema = forklift_testkit::fresh_schema().await;
    let db = schema.url.clone();
    let out = forklift(&db, &["tenant", "create", "acme", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_string();
    assert!(created["tenant_id"].as_str().unwrap().len() == 36 && key.starts_with("fk_"));

    let server = Server::start(&db, &["--shutdown-grace-seconds", "5"]);
    let enqueue = |payload: &str| {
        Command::new(BIN)
            .args([
                "enqueue",
                "simulate",
                "--payload",
                payload,
                "--wait",
                "--server",
                &server.url,
                "--api-key",
                &key,
            ])
            .output()
            .unwrap()
    };
    let ok = enqueue(r#"{"steps": 3, "step_ms": 50}"#);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SUCCESS");
    let failed = enqueue(r#"{"steps": 0, "fail_attempts": 9, "permanent": true}"#);
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&failed.stdout).trim(), "FAILED");

    let jobs = Command::new(BIN)
        .args(["jobs", "--server", &server.url, "--api-key", &key])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&jobs.stdout).lines().count(),
        3,
        "a header and two jobs"
    );

    let list = forklift(&db, &["tenant", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("acme"));
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&key),
        "keys are never shown again"
    );

    assert!(server.stop().success(), "SIGTERM exits 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_running_jobs_after_the_grace_period() {
    let schema = forklift_testkit::fresh_schema().await;
    let server = Server::start(&schema.url, &["--dev", "--shutdown-grace-seconds", "1"]);
    let http = reqwest::Client::new();
    let job: Value = http
        .post(format!("{}/jobs", server.url))
        .json(&serde_json::json!({"type": "simulate", "payload": {"steps": 1000, "step_ms": 100}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["job_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j = get_json(&http, &format!("{}/jobs/{id}", server.url)).await;
        if j["status"] == "RUNNING" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.stop().success());
    let (status, attempt): (String, i32) =
        sqlx::query_as("select status, attempt from forklift_jobs")
            .fetch_one(&schema.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempt),
        ("QUEUED", 0),
        "released without using an attempt"
    );
}

#[test]
fn dev_mode_on_a_public_address_is_refused() {
    let out = Command::new(BIN)
        .args(["serve", "--dev", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_and_an_unreachable_database_get_clear_messages() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let schema = forklift_testkit::fresh_schema().await;
    let out = forklift(&schema.url, &["serve", "--listen", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("could not listen") && !err.contains("panicked"),
        "{err}"
    );

    let out = forklift("postgres://postgres@127.0.0.1:1/none", &["migrate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("could not connect") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "FORKLIFT_LISTEN",
        "FORKLIFT_CONCURRENCY",
        "FORKLIFT_DEV",
        "FORKLIFT_RATE_LIMIT",
    ] {
        assert!(help.contains(var), "serve --help mentions {var}");
    }
}

#[test]
fn serve_dev_on_sqlite_runs_the_quick_tour_with_nothing_installed() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("forklift.db").display());
    let server = Server::start(&db, &["--dev"]);
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--server", &server.url])
            .output()
            .unwrap()
    };
    let done = run(&[
        "enqueue",
        "simulate",
        "--payload",
        r#"{"steps": 2, "step_ms": 20}"#,
        "--wait",
    ]);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let partial = run(&[
        "enqueue",
        "simulate",
        "--payload",
        r#"{"steps": 1, "step_ms": 1, "partial": true}"#,
        "--wait",
    ]);
    assert_eq!(partial.status.code(), Some(2), "PARTIAL_SUCCESS exits 2");
    let id = String::from_utf8(run(&["enqueue", "noop"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    let status = run(&["status", &id, "--follow"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("SUCCESS"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert!(server.stop().success());
    assert!(
        dir.path().join("forklift.db").exists(),
        "everything is kept in the file"
    );
}

/// The issue's repro: `DATABASE_URL` through PgBouncer in transaction pooling mode, 200
/// concurrent `POST /jobs`. Before `--transaction-pooler`, most answered 503 (`prepared
/// statement "sqlx_s_5" does not exist`) and none ran. No LISTEN URL is given, so the
/// workers find the jobs by polling.
#[tokio::test(flavor = "multi_thread")]
async fn serve_behind_pgbouncer_in_transaction_mode_takes_and_runs_every_job() {
    let db = forklift_testkit::fresh_pooled_database().await;
    let url = format!(
        "postgres://{}@{}:{}/{}",
        db.pooled.get_username(),
        db.pooled.get_host(),
        db.pooled.get_port(),
        db.pooled.get_database().unwrap()
    );
    let server = Server::start(&url, &["--dev", "--transaction-pooler"]);
    let http = reqwest::Client::new();
    let posts = (0..200).map(|i| {
        let (http, url) = (http.clone(), format!("{}/jobs", server.url));
        async move {
            let body = serde_json::json!({"type": "noop", "payload": {"i": i}});
            http.post(url).json(&body).send().await.unwrap().status()
        }
    });
    let statuses = futures::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| s.as_u16() == 202), "{statuses:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = get_json(&http, &format!("{}/stats", server.url)).await;
        if stats["counts"]["by_status"]["SUCCESS"] == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not all jobs ran: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.stop().success(), "SIGTERM exits 0");
}
