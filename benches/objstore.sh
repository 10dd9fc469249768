#!/usr/bin/env bash
# Object-store recovery figures of BENCHMARKS.md, side by side in one run: a local single-node
# SeaweedFS (fsync on for the bucket) on 127.0.0.1, then
#   - PUT 4 KiB over 8 connections: blobvault with s3:// recovery, blobvault without recovery,
#     and the object store's own rate (`bench --object-store`: the same sizes and connections
#     PUT straight into the bucket with object_store), plain PUTs and, with
#     `--object-store-create`, create-only PUTs with metadata as the recovery backend writes;
#   - PUT 64 MiB: blobvault with s3:// recovery against the store's own upload rate.
# Build first: cargo build --release. weed comes from .ci/seaweedfs.sh (or BLOBVAULT_WEED).
# Usage: benches/objstore.sh [path/to/blobvault]   (N4K and N64M set the blob counts)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(realpath "${1:-target/release/blobvault}")
N4K=${N4K:-10000}
N64M=${N64M:-8}
WEED=${BLOBVAULT_WEED:-$(.ci/seaweedfs.sh)}
export RUST_LOG=warn

work=$(mktemp -d "${TMPDIR:-/tmp}/blobvault-objbench.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Polls a command until it succeeds: 600 tries, 0.1 s apart.
wait_for() {
    local what=$1; shift
    for _ in $(seq 600); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $what; logs in $work" >&2
    tail -n 20 "$work"/*.log >&2
    exit 1
}
start() { # name, args…
    local name=$1; shift
    "$WEED" -logtostderr "$@" -ip=127.0.0.1 -ip.bind=127.0.0.1 >"$work/$name.log" 2>&1 &
    pids+=($!)
}

mp=$(free_port); mg=$(free_port); vp=$(free_port); vg=$(free_port)
fp=$(free_port); fg=$(free_port); sp=$(free_port); sg=$(free_port)
mkdir -p "$work/master" "$work/volume" "$work/filer"
cat >"$work/s3.json" <<JSON
{"identities":[{"name":"bench","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
# In stages: a volume server started before the master leads retries only 5 s later.
start master master -port="$mp" -port.grpc="$mg" -mdir="$work/master" -telemetry=false -volumeSizeLimitMB=1024
wait_for "the master" sh -c "curl -sf http://127.0.0.1:$mp/cluster/status | grep -q '\"IsLeader\":true'"
start volume volume -port="$vp" -port.grpc="$vg" -dir="$work/volume" -max=50 -master="127.0.0.1:$mp.$mg"
start filer filer -port="$fp" -port.grpc="$fg" -master="127.0.0.1:$mp.$mg" -defaultStoreDir="$work/filer" -localSocket="$work/filer.sock"
wait_for "the volume server" sh -c "curl -sf http://127.0.0.1:$mp/dir/status | grep -q '127.0.0.1:$vp'"
wait_for "the filer" curl -sf "http://127.0.0.1:$fp/"
start s3 s3 -port="$sp" -port.grpc="$sg" -port.iceberg=0 -port.lance=0 -filer="127.0.0.1:$fp.$fg" -config="$work/s3.json" -localSocket="$work/s3.sock"
wait_for "the S3 gateway" sh -c "curl -s http://127.0.0.1:$sp/ | grep -q '<Error>'"
shell() { echo "$1" | "$WEED" -logtostderr shell -master="127.0.0.1:$mp.$mg" -filer="127.0.0.1:$fp.$fg" 2>/dev/null; }
shell "s3.bucket.create -name bench" | grep -q "created bucket bench"
shell "fs.configure -locationPrefix=/buckets/bench -fsync=true -apply" | grep -q '"fsync":  *true'
wait_for "volumes for the bucket" curl -sf "http://127.0.0.1:$mp/vol/grow?collection=bench&count=1"

export AWS_ENDPOINT_URL="http://127.0.0.1:$sp" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret

# A `blobvault serve` on a fresh directory; sets $addr and $spid.
serve() { # name, serve args…
    local name=$1; shift
    "$B" serve -d "$work/$name" -p 0 "$@" >"$work/$name.out" 2>"$work/$name.log" &
    spid=$!
    pids+=("$spid")
    wait_for "blobvault $name" grep -q "listening on" "$work/$name.out"
    addr=$(sed -n 's/^listening on //p' "$work/$name.out")
}
run() {
    echo
    echo "\$ blobvault $*"
    "$B" "$@" | tee "$work/last.txt"
}
# Field 3 (ops/s) and 4 (MB/s) of phase $1 in the last report.
fig() { awk -v p="$1" -v f="$2" '$1 == p { print $f }' "$work/last.txt"; }
summary=()

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  nproc: $(nproc)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "SeaweedFS: $("$WEED" version 2>/dev/null | head -n1), single node on 127.0.0.1, fsync on for the bucket"

serve rec4k --recovery-dir s3://bench/rec4k
rec=$addr; recpid=$spid
serve plain4k
plain=$addr
# Twice, alternating (the machine is shared and noisy).
for round in 1 2; do
    echo; echo "== 4 KiB, 8 connections, round $round"
    run bench -q --server "$rec" -n "$N4K" -s 4KiB -c 8 --phases put --seed "${round}1" --server-pid "$recpid"
    r=$(fig put 3)
    # Without recovery, then (same report) the same PUTs straight into the bucket.
    run bench -q --server "$plain" -n "$N4K" -s 4KiB -c 8 --phases put --seed "${round}2" --object-store "s3://bench/direct4k"
    p=$(fig put 3); d=$(fig store-put 3)
    # The store alone again, writing as the recovery backend does (create-only, metadata).
    run bench -q --server "$plain" -n "$N4K" -s 4KiB -c 8 --phases put --seed "${round}3" --object-store "s3://bench/direct4k" --object-store-create
    dc=$(fig store-create 3)
    summary+=("$(awk -v r="$r" -v p="$p" -v d="$d" -v dc="$dc" -v n="$round" 'BEGIN {
        printf "4 KiB x8, round %s: recovery %s ops/s, no recovery %s ops/s, store alone %s ops/s (create-only %s): recovery = %.0f %% of the store (%.0f %% of create-only), %.0f %% of no recovery", n, r, p, d, dc, 100*r/d, 100*r/dc, 100*r/p }')")
done

serve rec64m --recovery-dir s3://bench/rec64m
rec=$addr; recpid=$spid
for round in 1 2; do
    echo; echo "== 64 MiB, 1 connection, round $round"
    run bench -q --server "$rec" -n "$N64M" -s 64MiB -c 1 --phases put --seed "${round}4" --server-pid "$recpid"
    r=$(fig put 4)
    run bench -q --server "$plain" -n "$N64M" -s 64MiB -c 1 --phases put --seed "${round}5" --object-store "s3://bench/direct64m"
    p=$(fig put 4); d=$(fig store-put 4)
    summary+=("$(awk -v r="$r" -v p="$p" -v d="$d" -v n="$round" 'BEGIN {
        printf "64 MiB x1, round %s: recovery %s MB/s, no recovery %s MB/s, store alone %s MB/s: recovery = %.0f %% of the store", n, r, p, d, 100*r/d }')")
done
echo
printf '%s\n' "${summary[@]}"
