#!/usr/bin/env bash
# Checks that /openapi.json says exactly what the server does: Schemathesis generates
# requests from the document (valid ones, which must be accepted, and invalid ones, which
# must be refused with a documented 4xx) against a real `forklift serve` with a real API
# key, on SQLite and on PostgreSQL, with every check (`--checks all`: status codes,
# content types, response schemas, headers, acceptance of valid and rejection of invalid
# data, authentication). About a minute per store.
#
#   crates/forklift-server/tests/schemathesis.sh
#
# Environment: DATABASE_URL, a PostgreSQL server whose user may create databases (default
# the tests' postgres://postgres@127.0.0.1:5432/test; without one answering, PostgreSQL is
# skipped with a notice); SCHEMATHESIS_SEED (default 1: CI runs the same cases every
# time); SCHEMATHESIS_EXAMPLES (default 100 per operation); FORKLIFT_BIN, a `forklift`
# binary already built (default: cargo builds one).
set -euo pipefail
cd "$(dirname "$0")/../../.."
repo=$PWD

version=4.32.5
venv="${TMPDIR:-/tmp}/forklift-schemathesis-$version"
if [[ ! -x "$venv/bin/st" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$version"
fi

forklift=${FORKLIFT_BIN:-}
if [[ -z "$forklift" ]]; then
    cargo build --quiet -p forklift-server
    forklift="${CARGO_TARGET_DIR:-target}/debug/forklift"
fi
work=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    if [[ -n "${scratch_db:-}" ]]; then psql "$admin_url" -qc "drop database if exists $scratch_db" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Serves the store at $1 on a free port, with a new tenant's key, and runs Schemathesis.
check_store() {
    local name=$1 url=$2 port key
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    key=$(DATABASE_URL=$url "$forklift" tenant create schemathesis --json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
    # The tenant's key doubles as the metrics token, so that the one Authorization header
    # Schemathesis sends opens /metrics as well.
    DATABASE_URL=$url FORKLIFT_METRICS_TOKEN=$key "$forklift" serve --listen "127.0.0.1:$port" --no-workers --rate-limit 0 \
        >"$work/$name.log" 2>&1 &
    server_pid=$!
    echo "== Schemathesis on $name"
    # From the scratch folder: Schemathesis leaves its cache (.schemathesis/) where it runs.
    if ! (cd "$work" && PYTHONPATH="$repo/crates/forklift-server/tests" SCHEMATHESIS_HOOKS=schemathesis_hooks "$venv/bin/st" --config-file "$repo/crates/forklift-server/tests/schemathesis.toml" \
        run "http://127.0.0.1:$port/openapi.json" --wait-for-schema 20 \
        -H "Authorization: Bearer $key" --checks all \
        --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" --seed "${SCHEMATHESIS_SEED:-1}"); then
        echo "== the server's log:"; cat "$work/$name.log"
        return 1
    fi
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

check_store sqlite "sqlite://$work/forklift.db"

admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
if psql "$admin_url" -qc 'select 1' >/dev/null 2>&1; then
    scratch_db="forklift_schemathesis_$$"
    psql "$admin_url" -qc "create database $scratch_db" >/dev/null
    check_store postgres "${admin_url%/*}/$scratch_db"
else
    echo "== PostgreSQL skipped: nothing answers at $admin_url"
fi
