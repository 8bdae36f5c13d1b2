#!/usr/bin/env bash
# Instructions per event on the memory bus's publish -> handler path and on a raw
# tokio broadcast channel doing the same handoff, counted by callgrind (deterministic,
# unaffected by machine load). Each path runs twice, with SMALL and LARGE events; the
# difference in instructions over the difference in events cancels out setup and
# teardown. Usage: scripts/instructions.sh [paths...]   (default: bus bus-retry raw)
# Needs valgrind. Env: SMALL (default 20000), LARGE (default 100000), BIN (a prebuilt
# `instructions` bench binary, to measure another checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${SMALL:-20000}
LARGE=${LARGE:-100000}
if [[ -z "${BIN:-}" ]]; then
  BIN=$(cargo bench -p event-bus-memory --bench instructions --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
fi
[[ -x "$BIN" ]] || { echo "instructions bench binary not found" >&2; exit 1; }
paths=("$@")
[[ ${#paths[@]} -gt 0 ]] || paths=(bus bus-retry raw)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { # path events -> total instructions (Ir)
  valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$BIN" "$1" "$2" >/dev/null 2>"$tmp/log"
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$tmp/log"
}
printf '%-10s %12s\n' path 'Ir/event'
for path in "${paths[@]}"; do
  small=$(count "$path" "$SMALL")
  large=$(count "$path" "$LARGE")
  printf '%-10s %12d\n' "$path" $(( (large - small) / (LARGE - SMALL) ))
done
