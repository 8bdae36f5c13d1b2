#!/usr/bin/env bash
# Runs the `eventbus bench` list of docs/benchmarks.md three times (the whole list, then
# again, so slow drifts of the machine spread over every workload), keeps every JSON
# report under $OUT, and prints per workload: the bus/raw throughput ratio of each run,
# the median, and the load average each run started under.
#
#   scripts/bench.sh                 # everything (a failed run is reported and skipped)
#   scripts/bench.sh memory redis    # only these groups (memory redis postgres nats
#                                    # durable latency)
#   RUNS=5 OUT=/tmp/bench scripts/bench.sh
#   MEMORY_RATE=400000 scripts/bench.sh latency   # pace memory at half its saturation rate
#
# Servers: REDIS_URL, POSTGRES_URL, NATS_URL (defaults: the local ones on loopback).
set -euo pipefail -f  # -f: the URLs hold `?`, never a glob
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${OUT:-target/bench-reports}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
GROUPS_WANTED=${*:-memory redis postgres nats durable latency}
mkdir -p "$OUT"
cargo build --release --quiet -p event-bus-cli
B=target/release/eventbus

# name | group | arguments
WORKLOADS=(
  "memory-1sub|memory|bench --events 200000"
  "memory-4subs|memory|bench --events 200000 --subscribers 4"
  "memory-2pub-batch100|memory|bench --events 200000 --publishers 2 --batch 100"
  "memory-1M|memory|bench --events 1000000 --min-seconds 0"
  "redis-1sub|redis|--url $REDIS_URL bench --events 20000"
  "redis-batch100|redis|--url $REDIS_URL bench --events 20000 --batch 100"
  "redis-64pub|redis|--url $REDIS_URL bench --events 50000 --publishers 64"
  "postgres-1sub-tls|postgres|--url $POSTGRES_URL bench --events 10000"
  "postgres-batch100-tls|postgres|--url $POSTGRES_URL bench --events 10000 --batch 100"
  "postgres-1sub-plain|postgres|--url $POSTGRES_URL?sslmode=disable bench --events 10000"
  "postgres-batch100-plain|postgres|--url $POSTGRES_URL?sslmode=disable bench --events 10000 --batch 100"
  "nats-1sub|nats|--url $NATS_URL bench --events 50000"
  "nats-batch100|nats|--url $NATS_URL bench --events 50000 --batch 100"
  "redis-durable-batch100|durable|--url $REDIS_URL bench --durable --events 20000 --batch 100 --min-seconds 2"
  "redis-durable-4groups|durable|--url $REDIS_URL bench --durable --events 20000 --batch 100 --subscribers 4 --min-seconds 2"
  "postgres-durable-1sub|durable|--url $POSTGRES_URL bench --durable --events 20000 --batch 100 --min-seconds 2"
  "postgres-durable-2subs|durable|--url $POSTGRES_URL bench --durable --events 20000 --batch 100 --subscribers 2 --min-seconds 2"
  "nats-durable-batch100|durable|--url $NATS_URL bench --durable --events 20000 --batch 100 --min-seconds 2"
  "memory-paced|latency|bench --events 500000 --rate ${MEMORY_RATE:-500000}"
  "redis-paced|latency|--url $REDIS_URL bench --events 10000 --rate 4000"
  "postgres-paced|latency|--url $POSTGRES_URL bench --events 5000 --rate 2000"
)

for run in $(seq 1 "$RUNS"); do
  for w in "${WORKLOADS[@]}"; do
    IFS='|' read -r name group args <<<"$w"
    [[ " $GROUPS_WANTED " == *" $group "* ]] || continue
    # shellcheck disable=SC2086 # the arguments are words
    if ! $B $args --json >"$OUT/$name.$run.json" 2>"$OUT/$name.$run.err"; then
      echo "$name run $run failed: $(tail -1 "$OUT/$name.$run.err")" >&2
      rm -f "$OUT/$name.$run.json"
    fi
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
names = sorted({f.rsplit('.', 2)[0] for f in os.listdir(out) if f.endswith('.json')})
print(f"{'workload':28} {'bus ev/s (runs)':>34} {'ratio (runs)':>22} {'median':>6}  p99 bus/raw µs (median run)  load")
for name in names:
    reports = []
    for r in range(1, runs + 1):
        try:
            with open(os.path.join(out, f"{name}.{r}.json")) as f:
                reports.append(json.load(f))
        except FileNotFoundError:
            pass
    if not reports:
        continue
    ratios = [(r.get('ratio') or {}).get('throughput', 0.0) for r in reports]
    order = sorted(range(len(reports)), key=lambda i: ratios[i])
    mid = reports[order[len(order) // 2]]
    rates = "; ".join(f"{r['bus']['events_per_s']:,.0f}" for r in reports)
    raw_p99 = (mid.get('raw') or {}).get('latency_us', {}).get('p99', 0.0)
    loads = ",".join(f"{(r.get('load_average') or [0])[0]:.1f}" for r in reports)
    print(f"{name:28} {rates:>34} {'; '.join(f'{x:.2f}' for x in ratios):>22} "
          f"{statistics.median(ratios):6.2f}  {mid['bus']['latency_us']['p99']:,.0f} / {raw_p99:,.0f}  {loads}")
PY
