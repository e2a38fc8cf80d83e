#!/usr/bin/env bash
# Forklift beside its peers (graphile-worker, pg-boss, apalis) and the database's own
# ceiling, on one private PostgreSQL 15 cluster with default settings, runs interleaved
# round by round (BENCH.md). Prints each Forklift/peer ratio and writes
# docs/benchmarks-data.json and docs/benchmarks-chart.svg.
#   bench/compare.sh [rounds=3] [jobs=50000]
# Env: PEERS_SRC (default ../shared/bench/peers), SKIP_SQLITE=1.
# The peers are installed at run time into a temporary copy; nothing of them is committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-3}"; jobs="${2:-50000}"
src="${PEERS_SRC:-$root/../shared/bench/peers}"
work="${TMPDIR:-/tmp}/forklift-peers"
logs="$root/target/bench-logs/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$logs"
if [ ! -d "$work" ]; then cp -r "$src" "$work"; chmod -R u+w "$work"; fi
cargo build --release --quiet -p forklift-server --manifest-path "$root/Cargo.toml"
forklift="$root/target/release/forklift"
url="postgres://postgres@127.0.0.1:54329/bench"
started=0
if ! "$work/pg.sh" status >/dev/null 2>&1; then "$work/pg.sh" start >/dev/null; started=1; fi
"$work/pg.sh" settings | tee "$logs/settings.txt"

# Phase 1: burn-down (library worker, and end to end through the API of `serve` as
# shipped) and latency, through the peers' own interleaving harness.
EXTRA_CMD="DATABASE_URL=$url RUST_LOG=error $forklift bench --reps 1 --jobs $jobs --what burndown,latency,api" \
  "$work/anchors.sh" "$rounds" "$jobs" 2>&1 | tee "$logs/anchors.log"
"$work/pg.sh" status >/dev/null 2>&1 || "$work/pg.sh" start >/dev/null

# Phase 2: enqueue (batch, single, HTTP) beside graphile-worker and the database ceiling.
for r in $(seq 1 "$rounds"); do
  echo "### round $r graphile" | tee -a "$logs/enqueue.log"
  "$work/run_node.sh" graphile_worker_bench.js --reps 1 --jobs "$jobs" --what bulk,single 2>&1 | tee -a "$logs/enqueue.log"
  echo "### round $r forklift" | tee -a "$logs/enqueue.log"
  DATABASE_URL="$url" RUST_LOG=warn "$forklift" bench --reps 1 --jobs "$jobs" --what batch,single,http 2>&1 | tee -a "$logs/enqueue.log"
  echo "### round $r forklift-wrk" | tee -a "$logs/enqueue.log"
  DATABASE_URL="$url" FORKLIFT="$forklift" "$root/bench/http.sh" 20 16 2>/dev/null | tee -a "$logs/enqueue.log"
  echo "### round $r ceiling" | tee -a "$logs/enqueue.log"
  DATABASE_URL="$url" "$work/db_ceiling.sh" 1 8 2>&1 | tee -a "$logs/enqueue.log"
done

# Phase 3: SQLite beside the PostgreSQL figures (same rounds, same machine).
if [ "${SKIP_SQLITE:-0}" != 1 ]; then
  for r in $(seq 1 "$rounds"); do
    echo "### round $r forklift-sqlite" | tee -a "$logs/sqlite.log"
    rm -f "$logs/bench.db"*
    DATABASE_URL="sqlite://$logs/bench.db" RUST_LOG=warn "$forklift" bench --reps 1 --jobs "$jobs" \
      --what burndown,latency --label forklift-sqlite 2>&1 | tee -a "$logs/sqlite.log"
  done
fi
[ "$started" = 1 ] && "$work/pg.sh" stop >/dev/null
python3 "$root/bench/report.py" "$logs" "$root/docs"
