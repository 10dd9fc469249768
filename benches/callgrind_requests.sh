#!/usr/bin/env bash
# User-space instructions per request of the in-process server's threads, by role, under
# callgrind: repeatable to a few per cent on a loaded machine, where CPU time per request swings
# by 2x (BENCHMARKS.md, issue #13). Kernel work (syscalls, TCP, copies) is not counted: compare
# builds with this, and the server with the raw-TCP floor with `blobvault bench --floor`. Under
# valgrind the sha1 crate runs its portable code (no SHA-NI), so PUTs count far more hashing than
# they cost natively.
#
# Usage: benches/callgrind_requests.sh [BINARY] [bench args…]
#   default args: -n 2000 -s 4KiB -c 4 --get-rounds 5 --phases put,get --no-fsync --seed 1
# Prints, per thread role (worker, writer, acceptor, other), the instructions and the
# instructions per request (requests = PUTs + GETs × rounds + DELETEs of the phases run).
set -euo pipefail
B=${1:-target/release/blobvault}
shift || true
ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
    ARGS=(-n 2000 -s 4KiB -c 4 --get-rounds 5 --phases put,get --no-fsync --seed 1)
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
RUST_LOG=warn valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$out/cg.%p" "$B" bench -q --json "${ARGS[@]}" >"$out/report.json" 2>/dev/null
python3 - "$out" <<'EOF'
import glob, json, sys
out = sys.argv[1]
report = json.load(open(f"{out}/report.json"))
requests = sum(p["ops"] for p in report["phases"] if not p["name"].startswith(("raw-", "floor-")))
roles = {}
for f in glob.glob(f"{out}/cg.*"):
    total, role = 0, "client and other"
    with open(f, errors="replace") as fh:
        for line in fh:
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
            # What a thread runs tells its role (inlining may hide `run`, so several names).
            elif "reactor::Worker::r" in line:
                role = "server worker"
            elif ("store::writer::run" in line or "store::writer::commit" in line) \
                    and role != "server worker":
                role = "store writer"
            elif "server::Acceptor" in line and role == "client and other":
                role = "server acceptor"
    roles[role] = roles.get(role, 0) + total
print(f"requests: {requests}")
for role, n in sorted(roles.items()):
    print(f"{role:<18} {n / 1e6:10.1f} M instructions  {n / max(requests, 1):10.0f} per request")
server = sum(n for r, n in roles.items() if r.startswith(("server", "store")))
print(f"{'server total':<18} {server / 1e6:10.1f} M instructions  {server / max(requests, 1):10.0f} per request")
EOF
