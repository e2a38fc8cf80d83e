//! The store conformance suite: the guarantees of `Store`, written once and run on both
//! stores (`pg::name` on a real PostgreSQL, `sqlite::name` on a real SQLite file):
//! enqueue, unique keys, listing, cancel and retry, fetch order and exclusivity,
//! lease-guarded heartbeats and completion, rescue, leadership, pruning, migrations.
//! A few tests are for one database only: a row lock held by another transaction and
//! enqueue in a `PgConnection` on PostgreSQL; enqueue in a `SqliteConnection`, the file's
//! settings and the busy timeout on SQLite.

#[path = "../support/mod.rs"]
mod support;

mod enqueue;
mod manage;
mod pooler;
mod upkeep;
mod values;
mod work;

use std::time::Duration;

use forklift::store::{Completion, FetchParams, Lease, LeasedJob};
use forklift::{ErrorEntry, JobStatus, NewJob};
use serde_json::json;
use support::{Harness, conformance};

use self::enqueue::*;
use self::manage::*;
use self::upkeep::*;
use self::values::*;
use self::work::*;

conformance! {
    both: [
        enqueue_returns_a_queued_job_with_defaults,
        invalid_job_is_refused_and_nothing_is_written,
        enqueue_many_keeps_request_order,
        ten_thousand_jobs_in_one_call_are_all_inserted_in_order,
        a_batch_that_fails_partway_writes_nothing,
        more_than_ten_thousand_jobs_at_once_is_refused,
        a_unique_key_repeated_in_one_batch_makes_one_job,
        thirty_two_concurrent_enqueues_of_one_unique_key_make_one_job,
        unique_key_is_free_again_once_the_job_finished,
        unique_keys_are_per_tenant,
        another_tenants_job_is_not_found,
        every_field_round_trips,
        list_is_newest_first_with_filters_and_a_cursor,
        list_filters_by_creation_time,
        cancelling_a_queued_job_ends_it_at_once_and_a_finished_one_conflicts,
        cancelling_a_running_job_flags_it_and_tells_this_process,
        enqueue_retry_and_resume_wake_this_process,
        retry_requeues_a_finished_job_with_fresh_attempts_and_refuses_a_live_one,
        retry_conflicts_while_another_live_job_holds_the_unique_key,
        fetch_follows_priority_then_run_at_then_id,
        fetch_takes_only_the_asked_types_and_queue_and_counts_the_attempt,
        two_processes_racing_never_take_the_same_job,
        paused_queue_is_not_fetched_until_resumed_and_only_for_that_tenant,
        heartbeat_extends_only_leases_still_held,
        progress_is_written_only_under_the_current_lease,
        completion_after_the_lease_was_lost_is_rejected,
        a_failed_attempt_with_attempts_left_backs_off_and_keeps_its_errors_in_order,
        a_snooze_gives_the_attempt_back,
        rescue_requeues_a_lapsed_job_or_fails_it_when_out_of_attempts,
        rescue_cancels_a_lapsed_job_whose_cancel_was_asked,
        concurrent_single_enqueues_from_many_tenants_each_get_their_own_job,
        tenants_have_unique_names_and_keys_resolve_until_revoked,
        counts_depths_and_recent_stats_are_per_tenant,
        a_retry_of_a_job_whose_cancel_was_asked_ends_cancelled,
        release_returns_the_attempt,
        only_one_process_is_leader_until_it_resigns,
        a_lapsed_leadership_goes_to_the_next_candidate,
        prune_deletes_only_old_finished_jobs,
        migrations_are_safe_to_run_concurrently_and_again,
        nul_characters_are_refused_in_every_field_before_anything_is_written,
        a_run_at_in_the_past_is_due_now_and_does_not_jump_the_line,
        a_run_at_more_than_ten_years_ahead_or_before_year_zero_is_refused,
        list_time_filters_and_cursors_outside_the_calendar_are_refused_not_failed,
        a_completion_with_nul_characters_is_stored_with_them_replaced,
        a_retry_delay_past_any_calendar_is_cut_to_ten_years,
        a_rescue_back_off_past_any_calendar_is_cut_to_ten_years,
        releasing_a_job_whose_cancel_was_asked_cancels_it,
        a_failure_of_a_job_whose_cancel_the_worker_never_heard_of_ends_cancelled,
        retry_clears_the_result_of_the_earlier_run,
        pruning_stops_between_batches_once_told_to,
        at_one_priority_tenants_with_due_jobs_take_turns,
        a_backlog_no_fetch_may_take_is_stepped_over,
        counts_follow_every_change_exactly,
        a_narrow_filter_reads_a_bounded_range_and_says_where_to_go_on,
        tenants_with_nothing_due_take_no_share_of_a_fetch,
    ],
    pg: [
        a_keyed_batch_that_fails_in_a_later_round_writes_nothing,
        transactional_enqueue_on_postgres_exists_only_if_the_transaction_commits,
        fetch_skips_jobs_locked_by_another_transaction,
        a_write_by_a_schema_qualified_name_is_counted_in_that_schema,
    ],
    sqlite: [
        transactional_enqueue_on_sqlite_exists_only_if_the_transaction_commits,
        the_file_is_created_in_wal_mode_with_full_sync,
        a_write_waits_for_another_connections_write_instead_of_failing,
    ],
}

fn noop() -> NewJob {
    NewJob::new("noop", json!({}))
}

fn fetch_params(limit: i64) -> FetchParams {
    FetchParams {
        queue: "default".into(),
        types: vec!["noop".into(), "simulate".into()],
        limit,
        worker_id: "test-worker".into(),
        lease_ttl: Duration::from_secs(30),
    }
}

fn lease(leased: &LeasedJob) -> Lease {
    Lease {
        job_id: leased.job.job_id,
        token: leased.lease_token,
    }
}

fn completion(leased: &LeasedJob, status: JobStatus) -> Completion {
    Completion {
        lease: lease(leased),
        attempt: leased.job.attempt,
        status,
        result: Some(json!({"ok": true})),
        result_url: None,
        errors: Vec::new(),
        retry_in: Duration::ZERO,
        give_attempt_back: false,
        progress: None,
    }
}

fn error_entry(message: &str, attempt: i32) -> ErrorEntry {
    ErrorEntry {
        message: message.into(),
        code: "x".into(),
        attempt,
        at: chrono::Utc::now(),
        details: json!({"n": message}),
    }
}

/// The ids a fetch of up to `limit` jobs leases, in the order it gives them.
async fn fetch_ids(h: &Harness, limit: i64) -> Vec<forklift::JobId> {
    h.store
        .job_fetch_available(&fetch_params(limit))
        .await
        .unwrap()
        .iter()
        .map(|l| l.job.job_id)
        .collect()
}

async fn fetch_one(h: &Harness) -> LeasedJob {
    h.store
        .job_fetch_available(&fetch_params(1))
        .await
        .unwrap()
        .remove(0)
}
