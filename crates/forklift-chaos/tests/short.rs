//! The chaos suite's short mode, run by `cargo test`: every kind of fault at least once
//! in a minute of load, then every goal asserted. `FORKLIFT_CHAOS_SEED` replays another
//! schedule.

use std::path::PathBuf;

use forklift_chaos::{Config, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_faults_loses_nothing_and_finishes_each_job_once() {
    let seed = std::env::var("FORKLIFT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261128);
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_forklift-chaos"));
    let config = Config::short(seed, exe);
    let (report, logs) = run(config.clone()).await.expect("the chaos run completes");
    report.print(&config);
    let missed = report.violations(&config);
    assert!(
        missed.is_empty(),
        "seed {seed}: goals missed (logs in {}):\n{}",
        logs.display(),
        missed.join("\n")
    );
}
