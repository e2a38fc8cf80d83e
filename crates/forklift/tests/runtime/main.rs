//! The worker runtime end to end, on both stores (`pg::name`, `sqlite::name`): handlers
//! run, fail, retry with back-off, time out, panic, snooze, get cancelled, and shutdown
//! puts work back. How wake-ups and cancels cross processes differs: PostgreSQL carries
//! them by NOTIFY (and its listener must survive a dead connection); SQLite's other
//! processes find jobs by polling and cancels at the next heartbeat.

#[path = "../support/mod.rs"]
mod support;

mod ahead;
mod fairness;
mod outcomes;
mod robustness;
mod signals;

use forklift::{NewJob, Registry, TypeOptions, builtin};
use support::{conformance, quick_backoff};

use self::ahead::*;
use self::fairness::*;
use self::outcomes::*;
use self::robustness::*;
use self::signals::*;

conformance! {
    both: [
        a_small_tenants_job_starts_after_a_bounded_part_of_a_big_tenants_backlog,
        worker_runs_a_job_to_success_with_its_result,
        many_jobs_all_finish_once,
        retryable_failures_back_off_and_then_succeed,
        a_retry_waits_for_its_back_off,
        exhausted_attempts_fail_the_job,
        a_permanent_error_fails_at_once,
        a_payload_that_does_not_fit_fails_permanently,
        a_panic_fails_the_attempt_and_the_worker_goes_on,
        an_attempt_past_its_timeout_is_stopped_and_fails,
        partial_success_lists_the_failed_items,
        a_snooze_runs_again_without_using_an_attempt,
        cancelling_a_running_job_reaches_its_handler_at_once,
        shutdown_lets_short_jobs_finish,
        shutdown_releases_jobs_still_running_after_the_grace_without_using_an_attempt,
        a_job_whose_worker_vanished_is_rescued_and_run_by_another,
        progress_is_written_while_the_handler_runs,
        per_type_concurrency_is_respected,
        an_error_message_with_a_nul_character_fails_only_its_job,
        a_completion_the_database_refuses_fails_that_job_and_not_the_others,
        snoozes_and_back_offs_past_any_calendar_wait_at_most_ten_years,
        a_dropped_worker_stops_fetching_and_releases_its_jobs,
        per_type_concurrency_is_per_process_across_queues,
        a_worker_whose_lease_renewals_fail_takes_no_new_jobs_until_they_succeed,
        room_a_limited_type_frees_in_one_queue_wakes_the_others,
        jobs_leased_ahead_are_released_at_shutdown_without_using_an_attempt,
        slow_jobs_are_not_leased_ahead,
        jobs_leased_ahead_go_back_to_the_queue_when_no_slot_frees,
        jobs_leased_ahead_whose_release_fails_stay_leased_and_renewed,
        a_job_cancelled_while_leased_ahead_never_runs,
        a_worker_reports_its_attempts_to_the_stats,
    ],
    pg: [
        completions_failing_for_a_while_all_land_once_writes_work_again,
        cancelling_a_running_job_reaches_its_handler_from_another_process,
        a_dead_listener_is_replaced_and_wake_ups_resume,
        a_job_enqueued_in_a_postgres_transaction_wakes_the_worker_on_commit,
    ],
    sqlite: [
        a_cancel_from_another_process_reaches_the_handler_at_its_next_heartbeat,
        a_job_enqueued_by_another_process_is_found_by_polling,
        a_job_enqueued_in_a_sqlite_transaction_wakes_the_worker_for_after_commit,
    ],
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("noop", builtin::Noop);
    r.register_with(
        "simulate",
        builtin::Simulate,
        TypeOptions {
            backoff: quick_backoff(),
            ..TypeOptions::default()
        },
    );
    r
}

fn simulate(payload: serde_json::Value) -> NewJob {
    NewJob::new("simulate", payload)
}
