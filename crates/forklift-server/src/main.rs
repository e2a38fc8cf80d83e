//! The `forklift` binary. Errors are printed as one clear message, never a backtrace.

use std::process::ExitCode;

use clap::Parser;
use forklift_server::cli::{Cli, Command};
use forklift_server::commands;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init()
    } else {
        logs.init()
    }
    let runtime = tokio::runtime::Runtime::new().expect("the Tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve::serve(args).await.map(|_| 0),
            Command::Worker(args) => commands::serve::worker(args).await.map(|_| 0),
            Command::Migrate(db) => commands::open_store(&db).await.map(|_| {
                println!("the schema is up to date");
                0
            }),
            Command::Tenant(cmd) => commands::tenant::run(cmd).await.map(|_| 0),
            Command::Enqueue(args) => commands::remote::enqueue(args).await,
            Command::Status(args) => commands::remote::status(args).await,
            Command::Jobs(args) => commands::remote::jobs(args).await,
            Command::Bench(args) => commands::bench::run(args).await.map(|_| 0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
