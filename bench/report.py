#!/usr/bin/env python3
"""Reads the logs of bench/compare.sh, prints Forklift's ratios to each peer and to the
database ceiling, and writes docs/benchmarks-data.json and docs/benchmarks-chart.svg."""
import json, re, statistics, sys
from pathlib import Path

logs, docs = Path(sys.argv[1]), Path(sys.argv[2])
vals = {}  # (system, metric) -> [values]

def add(system, metric, value):
    vals.setdefault((system, metric), []).append(value)

summary = re.compile(r"^(.+?)\s{2,}\s*([\d,]+(?:\.\d+)?)\s+(jobs/s|ms|req/s|MiB)\s")
for name in ["anchors.log", "enqueue.log", "sqlite.log"]:
    f = logs / name
    if not f.exists():
        continue
    system = None
    for line in f.read_text().splitlines():
        if line.startswith("=== anchors:"):
            break  # the peers' own summary of what was already read
        m = re.match(r"### round \d+ (?:peer )?(\S+)", line)
        if m:
            system = {"extra": "forklift"}.get(m.group(1), m.group(1))
            continue
        m = re.match(r"\s+(.+?): (?:tps=\S+ -> )?([\d.]+) rows/s", line)
        if m and system == "ceiling":
            add("ceiling", m.group(1), float(m.group(2)))
            continue
        m = summary.match(line.strip())
        if m and system:
            add(system, m.group(1).strip(), float(m.group(2).replace(",", "")))

def med(system, prefix):
    for (s, metric), v in vals.items():
        if s == system and metric.startswith(prefix):
            return statistics.median(v), min(v), max(v)
    return None

rows = []
def ratio(label, ours, theirs, goal, higher_better=True):
    a, b = med(*ours), med(*theirs)
    if not a or not b:
        rows.append((label, None, None, None, goal, None))
        return
    r = a[0] / b[0]
    ok = r >= goal if higher_better else r <= goal
    rows.append((label, a, b, r, goal, ok))

F = "forklift"
API = "burn-down through the API"
ratio("burn-down through the API, serve as shipped, /stats polled, vs graphile-worker",
      (F, API + " 50000, serve defaults, GET /stats"), ("graphile", "throughput burn-down"), 1.5)
ratio("the same, /stats polled every 100 ms vs not polled (cost < 3 %)",
      (F, API + " 50000, serve defaults, GET /stats"), (F, API + " 50000, serve defaults, no polling"), 0.97)
ratio("burn-down (library worker as shipped) vs graphile-worker", (F, "throughput burn-down"), ("graphile", "throughput burn-down"), 1.5)
ratio("burn-down vs pg-boss", (F, "throughput burn-down"), ("pgboss", "throughput burn-down"), 1.0)
ratio("burn-down vs apalis", (F, "throughput burn-down"), ("apalis", "throughput burn-down"), 1.0)
ratio("burn-down vs ceiling (claim 100 + update, 4 clients)", (F, "throughput burn-down"),
      ("ceiling", "cycle claim 100 + UPDATE done"), 0.9)
ratio("latency p50 vs graphile-worker (lower is better)", (F, "latency p50"), ("graphile", "latency p50"), 0.7, False)
ratio("latency p99 vs graphile-worker (lower is better)", (F, "latency p99"), ("graphile", "latency p99"), 0.7, False)
ratio("batch enqueue, calls of 1000 vs graphile chunks of 1000", (F, "batch enqueue 50000 (calls of 1000)"),
      ("graphile", "enqueue batch (addJobs chunks"), 2.0)
ratio("batch enqueue, largest call vs graphile one call", (F, "batch enqueue 50000 (calls of 10000)"),
      ("graphile", "enqueue batch (1 addJobs call"), 2.0)
ratio("single enqueue, 1 caller vs ceiling 1-row INSERT", (F, "single enqueue, 1 caller"),
      ("ceiling", "INSERT 1 row/txn, 1 client"), 0.75)
ratio("single enqueue, 16 callers vs ceiling 16 clients", (F, "single enqueue, 16 caller"),
      ("ceiling", "INSERT 1 row/txn, 16 clients"), 0.7)
ratio("HTTP enqueue (in-process client), 16 connections vs ceiling", (F, "HTTP enqueue, 16"),
      ("ceiling", "INSERT 1 row/txn, 16 clients"), 0.7)
ratio("HTTP enqueue (wrk), 16 connections vs ceiling 16 clients", ("forklift-wrk", "HTTP enqueue wrk, 16"),
      ("ceiling", "INSERT 1 row/txn, 16 clients"), 0.7)

def fmt(x):
    return "-" if x is None else (f"{x[0]:,.2f}" if x[0] < 100 else f"{x[0]:,.0f}") + f" [{x[1]:,.4g}–{x[2]:,.4g}]"

print("\n=== Forklift / peer, medians [min–max] over rounds ===")
print(f"{'comparison':<58} {'forklift':>24} {'peer':>24} {'ratio':>7} {'goal':>6}  met")
for label, a, b, r, goal, ok in rows:
    rs = "-" if r is None else f"{r:.2f}"
    print(f"{label:<58} {fmt(a):>24} {fmt(b):>24} {rs:>7} {goal:>6}  {'-' if ok is None else ('yes' if ok else 'NO')}")
print("\nAll medians:")
for (s, m), v in sorted(vals.items()):
    print(f"  {s:<16} {m:<56} {statistics.median(v):>12,.2f}  n={len(v)}")

docs.mkdir(parents=True, exist_ok=True)
(docs / "benchmarks-data.json").write_text(json.dumps({
    "medians": {f"{s} | {m}": statistics.median(v) for (s, m), v in sorted(vals.items())},
    "runs": {f"{s} | {m}": v for (s, m), v in sorted(vals.items())},
    "ratios": [{"comparison": l, "ratio": r, "goal": g, "met": ok} for l, a, b, r, g, ok in rows],
}, indent=2))

# A two-panel bar chart: burn-down jobs/s and latency p50/p99, one bar per system.
systems = [s for s in ["forklift", "forklift-sqlite", "graphile", "pgboss", "apalis"] if med(s, "throughput burn-down") or med(s, "latency p50")]
colors = {"forklift": "#2b6cb0", "forklift-sqlite": "#63b3ed", "graphile": "#a0aec0", "pgboss": "#cbd5e0", "apalis": "#718096"}
W, H, pad = 820, 360, 50
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>']
def panel(x0, title, metric, unit):
    data = [(s, med(s, metric)) for s in systems]
    data = [(s, v[0]) for s, v in data if v]
    if not data:
        return
    top = max(v for _, v in data) * 1.15
    pw, ph = W / 2 - pad * 1.5, H - pad * 2
    svg.append(f'<text x="{x0}" y="{pad - 20}" font-size="14" font-weight="bold">{title}</text>')
    bw = pw / max(len(data), 1) * 0.7
    for i, (s, v) in enumerate(data):
        h = ph * v / top
        x = x0 + i * pw / len(data)
        y = pad + ph - h
        svg.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{colors.get(s, "#999")}"/>')
        svg.append(f'<text x="{x + bw / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{v:,.{0 if v >= 100 else 2}f}</text>')
        svg.append(f'<text x="{x + bw / 2:.1f}" y="{pad + ph + 14:.1f}" text-anchor="middle">{s}</text>')
    svg.append(f'<text x="{x0}" y="{H - 8}" fill="#555">{unit}</text>')
panel(pad, "Burn-down, 50,000 noop jobs (higher is better)", "throughput burn-down", "jobs/s, median of rounds")
panel(W / 2 + pad / 2, "Latency p50 at 200 jobs/s (lower is better)", "latency p50", "ms from enqueue call to handler start")
svg.append("</svg>")
(docs / "benchmarks-chart.svg").write_text("\n".join(svg))
print(f"\nwrote {docs / 'benchmarks-data.json'} and {docs / 'benchmarks-chart.svg'}")
