#!/usr/bin/env bash
# HTTP enqueue rate: `POST /jobs` from wrk (Debian package `wrk`) with 16 keep-alive
# connections for 20 s against `forklift serve` (API only: no workers share the cores).
#   bench/http.sh [seconds=20] [connections=16]
# Env: DATABASE_URL (default: a fresh SQLite file), FORKLIFT (the binary).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-20}"; conns="${2:-16}"
forklift="${FORKLIFT:-$root/target/release/forklift}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
tmp="$(mktemp -d)"; trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
url="${DATABASE_URL:-sqlite://$tmp/http.db}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL="$url" RUST_LOG=warn "$forklift" serve --dev --no-workers --rate-limit 0 --listen "127.0.0.1:$port" &
pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"type": "noop", "payload": {"sku": "WH-000123", "warehouse": "north", "quantity": 42}}'
wrk.headers["Content-Type"] = "application/json"
LUA
out="$(wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$tmp/post.lua" "http://127.0.0.1:$port/jobs")"
echo "$out" >&2
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
p99=$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}')
non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
echo "=== forklift-http summary ==="
printf '%-52s %12.0f req/s   n=1\n' "HTTP enqueue wrk, $conns connections" "$rps"
printf '%-52s %12.2f ms      n=1\n' "HTTP enqueue wrk p99, $conns connections" "$p99"
[ -z "$non2xx" ] || echo "non-2xx answers: $non2xx"
echo "(json: {\"rps\": $rps, \"p99_ms\": $p99})"
