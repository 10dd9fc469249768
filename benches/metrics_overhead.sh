#!/usr/bin/env bash
# Metrics on versus off, side by side in one run: 4 KiB PUT and GET over 8 connections against
# `blobvault serve` processes, alternating between
#   off: a build without the metrics code (BASE, e.g. the commit before it), and
#   on:  this build with `--metrics` and a scraper reading /metrics every second (Prometheus
#        scrapes every 15 s or so: fifteen times that),
# both loaded by this build's `blobvault bench --server`. Prints each run and the ratios.
#
#   benches/metrics_overhead.sh BASE_BINARY [ROUNDS] [COUNT]
# NO_FSYNC=1 serves with --no-fsync (PUTs bound by CPU rather than by fsync, so the overhead of
# counting shows more).
set -euo pipefail
base=${1:?usage: $0 BASE_BINARY [ROUNDS] [COUNT]}
rounds=${2:-3}
count=${3:-20000}
new=$(dirname "$0")/../target/release/blobvault
work=$(mktemp -d)
fsync=()
[ -n "${NO_FSYNC:-}" ] && fsync=(--no-fsync)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# serve BINARY DIR [ARGS…]: starts a server; sets $pid, $addr and $metrics (empty if none).
serve() {
    local bin=$1 dir=$2
    shift 2
    mkfifo "$work/out"
    "$bin" serve --port 0 --dir "$dir" "$@" >"$work/out" 2>/dev/null &
    pid=$!
    exec 3<"$work/out"
    read -r line <&3
    addr=${line#listening on }
    metrics=
    if [[ " $* " == *" --metrics "* ]]; then
        read -r line <&3
        metrics=${line#metrics on http://}
        metrics=${metrics%/metrics}
    fi
    exec 3<&-
    rm "$work/out"
}

run() {
    local variant=$1 round=$2
    rm -rf "$work/store"
    if [ "$variant" = on ]; then
        serve "$new" "$work/store" "${fsync[@]}" --metrics 127.0.0.1:0
        (while sleep 1; do curl -s "http://$metrics/metrics" >/dev/null || true; done) &
        scraper=$!
    else
        serve "$base" "$work/store" "${fsync[@]}"
        scraper=
    fi
    "$new" bench --server "$addr" -n "$count" -s 4KiB -c 8 --phases put,get --get-rounds 5 \
        -q --json 2>/dev/null >"$work/$variant-$round.json"
    [ -n "$scraper" ] && kill "$scraper"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    python3 - "$work/$variant-$round.json" "$variant" "$round" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ph = {p["name"]: p for p in r["phases"]}
print(f'{sys.argv[2]:>3} round {sys.argv[3]}: put {ph["put"]["ops_per_sec"]:9.0f}/s '
      f'p50 {ph["put"]["latency_us"]["p50"]:7.1f} us   get {ph["get"]["ops_per_sec"]:9.0f}/s '
      f'p50 {ph["get"]["latency_us"]["p50"]:6.1f} us')
EOF
}

for round in $(seq 1 "$rounds"); do
    run off "$round"
    run on "$round"
done
python3 - "$work" "$rounds" <<'EOF'
import json, sys, statistics
work, rounds = sys.argv[1], int(sys.argv[2])
def rates(variant, phase):
    out = []
    for i in range(1, rounds + 1):
        r = json.load(open(f"{work}/{variant}-{i}.json"))
        out += [p["ops_per_sec"] for p in r["phases"] if p["name"] == phase]
    return out
for phase in ("put", "get"):
    off, on = rates("off", phase), rates("on", phase)
    ratios = sorted(a / b for a, b in zip(on, off))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"{phase}: off median {statistics.median(off):.0f}/s, on median {statistics.median(on):.0f}/s; "
          f"on/off per round: median {statistics.median(ratios):.3f}, quartiles {q[0]:.3f}-{q[2]:.3f}, "
          f"range {ratios[0]:.3f}-{ratios[-1]:.3f}")
EOF
