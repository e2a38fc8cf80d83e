"""Schemathesis hooks for tests/schemathesis.sh.

`run_at` may be at most ten years from now (like `delay_seconds`), a bound that moves with
the clock and that JSON Schema cannot state for a date-time (the document says it in the
field's description). Generated bodies whose `run_at` is valid but later than that are
brought back inside it, so that a schema-valid request is one the server must accept.
"""

from datetime import datetime, timedelta, timezone

import schemathesis

# The server's bound is 10 × 365 days; stay a day inside it.
LATEST = timedelta(days=10 * 365 - 1)


def _within_bound(job):
    if not isinstance(job, dict) or not isinstance(job.get("run_at"), str):
        return
    try:
        at = datetime.fromisoformat(job["run_at"].replace("Z", "+00:00"))
    except ValueError:
        return  # not a date-time: the server must refuse it, leave it be
    if at.tzinfo is None:
        return
    latest = datetime.now(timezone.utc) + LATEST
    if at > latest:
        job["run_at"] = latest.isoformat()


@schemathesis.hook
def map_body(context, body):
    _within_bound(body)
    if isinstance(body, dict) and isinstance(body.get("jobs"), list):
        for job in body["jobs"]:
            _within_bound(job)
    return body
