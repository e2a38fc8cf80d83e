//! The `forklift` command line: every flag has an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Forklift: background jobs on PostgreSQL (or SQLite), with an HTTP Jobs API.
#[derive(Parser, Debug)]
#[command(name = "forklift", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log as JSON lines instead of text. Log levels come from RUST_LOG (default info).
    #[arg(long, env = "FORKLIFT_LOG_JSON", global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API, workers for the built-in job types, and maintenance.
    Serve(ServeArgs),
    /// Run workers and maintenance only (to scale out against one database).
    Worker(WorkerArgs),
    /// Bring the database schema up to date, then exit.
    Migrate(DbArgs),
    /// Manage tenants and their API keys.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Enqueue a job through the API of a running server.
    Enqueue(EnqueueArgs),
    /// Show a job through the API of a running server.
    Status(StatusArgs),
    /// List recent jobs through the API of a running server.
    Jobs(JobsArgs),
    /// Measure enqueue, burn-down, latency and HTTP throughput (see docs/benchmarks.md).
    Bench(crate::commands::bench::BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// `postgres://…` or `sqlite://PATH`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://forklift.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// `DATABASE_URL` goes through a transaction pooler (PgBouncer with `pool_mode =
    /// transaction`): each statement is unnamed and runs in a transaction of its own.
    #[arg(long, env = "FORKLIFT_TRANSACTION_POOLER")]
    pub transaction_pooler: bool,
    /// With `--transaction-pooler`: a `postgres://` URL straight to the server, for LISTEN
    /// and lease renewals (3 connections), so that API traffic at the pooler cannot delay
    /// a renewal. Without it workers poll for new jobs every second.
    #[arg(
        long,
        env = "FORKLIFT_DIRECT_DATABASE_URL",
        requires = "transaction_pooler",
        hide_env_values = true
    )]
    pub direct_database_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Jobs run at once per queue in this process.
    #[arg(long, env = "FORKLIFT_CONCURRENCY", default_value_t = 100)]
    pub concurrency: usize,
    /// The queues to serve, comma-separated.
    #[arg(
        long,
        env = "FORKLIFT_QUEUES",
        default_value = "default",
        value_delimiter = ','
    )]
    pub queues: Vec<String>,
    /// Seconds that running jobs get to finish on SIGTERM/SIGINT before they are released.
    #[arg(long, env = "FORKLIFT_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// Built-in job types not to run, comma-separated (`noop`, `simulate`).
    #[arg(long, env = "FORKLIFT_DISABLE_TYPES", value_delimiter = ',')]
    pub disable_types: Vec<String>,
    /// Days to keep finished jobs before pruning them; 0 keeps them forever.
    #[arg(long, env = "FORKLIFT_RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Address to listen on.
    #[arg(long, env = "FORKLIFT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve requests without an API key as the default tenant. Loopback addresses only.
    #[arg(long, env = "FORKLIFT_DEV")]
    pub dev: bool,
    /// Requests per second per tenant; 0 turns rate limiting off.
    #[arg(long, env = "FORKLIFT_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Requests a tenant may burst above the rate.
    #[arg(long, env = "FORKLIFT_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,
    /// Jobs a tenant may have unfinished (queued or running); an enqueue or retry past it
    /// gets 429 `quota_exceeded`. 0: no quota.
    #[arg(long, env = "FORKLIFT_MAX_UNFINISHED_JOBS", default_value_t = 0)]
    pub max_unfinished_jobs: u64,
    /// The largest request body, in bytes.
    #[arg(long, env = "FORKLIFT_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// The bearer token that opens /metrics (tenants' API keys do not). Without it,
    /// /metrics is served only under --dev.
    #[arg(long, env = "FORKLIFT_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Seconds a request's body may take to arrive in full (1 to 86400); a slower one gets 408.
    #[arg(long, env = "FORKLIFT_BODY_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub body_timeout_seconds: u64,
    /// Seconds a connection may take to send a request's headers, counted from when it
    /// opens or from its previous response: also how long an idle keep-alive connection
    /// stays open. Behind a load balancer that reuses connections, set it above the
    /// balancer's idle timeout. 1 to 86400.
    #[arg(long, env = "FORKLIFT_HEADER_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub header_timeout_seconds: u64,
    /// Seconds a response may wait for the client to read any of it before the connection
    /// is closed (1 to 86400).
    #[arg(long, env = "FORKLIFT_WRITE_TIMEOUT_SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub write_timeout_seconds: u64,
    /// Connections open at once; one more is answered 503 and closed at once. Lowered,
    /// with a warning, when the open-files limit cannot hold it. At most 1,000,000.
    #[arg(long, env = "FORKLIFT_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Serve the API only: run no workers in this process.
    #[arg(long, env = "FORKLIFT_NO_WORKERS")]
    pub no_workers: bool,
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant and print its id and a new API key (shown only this once).
    Create {
        name: String,
        /// Print `{"tenant_id", "api_key"}`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List tenants and their keys (prefixes only).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Give an existing tenant another API key.
    AddKey {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke an API key by its prefix (the 8 hex digits after `fk_`).
    RevokeKey {
        prefix: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "FORKLIFT_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API key; not needed against `serve --dev`.
    #[arg(long, env = "FORKLIFT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct EnqueueArgs {
    /// The job type.
    #[arg(value_name = "TYPE")]
    pub job_type: String,
    /// The payload, as JSON.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long)]
    pub priority: Option<i16>,
    /// Show a progress bar until the job ends; exit 0 on SUCCESS, 2 on PARTIAL_SUCCESS,
    /// 1 on FAILED or CANCELLED.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub job_id: String,
    /// Print each change until the job ends.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Filter by status (comma-separated).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long = "type")]
    pub job_type: Option<String>,
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Where a SQLite URL points.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(PathBuf::from)
}
