#!/usr/bin/env bash
# Runs every speed target of BENCHMARKS.md with `blobvault bench`, one after the other, and
# prints each command before its report. Build first: cargo build --release.
# Usage: benches/targets.sh [path/to/blobvault]   (takes about 9 minutes)
# The store-level peers (SQLite, cacache): cargo bench --bench store -- '/4KiB/'  (about 4 minutes)
set -euo pipefail
B=${1:-target/release/blobvault}
export RUST_LOG=warn
run() {
    echo
    echo "\$ blobvault $*"
    "$B" "$@"
}
# Starts `blobvault serve` on store directory $1 with an OS-chosen port (a random fixed port can
# collide with one of the many client sockets of the runs) and sets $pid and $addr from its one
# stdout line, waiting at most 30 s for it.
start_server() {
    local out
    out=$(mktemp)
    "$B" serve -d "$1" -p 0 >"$out" 2>/dev/null &
    pid=$!
    addr=
    for _ in $(seq 300); do
        addr=$(sed -n 's/^listening on //p' "$out")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    rm -f "$out"
    if [ -z "$addr" ]; then
        echo "blobvault serve -d $1 did not start listening within 30 s" >&2
        return 1
    fi
}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  nproc: $(nproc)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  load: $(cut -d' ' -f1-3 /proc/loadavg)"

# PUT and GET 4 KiB over 8 connections, durable, each beside the raw-TCP floor of its shape: the
# server's CPU per request against the floor's (three runs: CPU per request swings with the load).
for _ in 1 2 3; do
    run bench -q -n 20000 -s 4KiB -c 8 --floor
done
# … and against the file-per-blob baseline with fsync, three times (the baseline swings).
for _ in 1 2 3; do
    run bench -q -n 20000 -s 4KiB -c 8 --phases put,get --compare files-fsync
done
# The Java-style client (small writes, Nagle on).
run bench -q -n 2000 -s 4KiB -c 1 --java-client

# 256 MiB: GET against raw loopback TCP (throughput, and server CPU per byte), PUT against dd
# conv=fdatasync (same run, same disk) and SHA-1 of the same bytes on one core.
for _ in 1 2; do
    run bench -q -n 2 -s 256MiB -c 1 --raw-tcp --get-rounds 4 --phases put,get
done
for _ in 1 2 3; do
    run bench -q -n 1 -s 256MiB -c 1 --phases put --dd --sha1
done

# Space: 10,000 blobs of 4 KiB.
run bench -q -n 10000 -s 4KiB -c 8 --phases put

# Space: 10,000 blobs of the JAR-like mix.
run bench -q -n 10000 -s jar -c 8 --phases put,get
# … and the file's length after a clean stop and `blobvault compact`.
dir=$(mktemp -d)
start_server "$dir"
run bench -q --server "$addr" -n 10000 -s jar -c 8 --phases put
kill -INT "$pid"
wait "$pid" 2>/dev/null || true
run stat -d "$dir"
run compact -d "$dir"
echo "on disk: $(du -B1 "$dir/blobs.redb" | cut -f1) bytes"
rm -rf "$dir"

# Peak RSS of a separate server process: 16 connections each streaming 256 MiB up and down.
dir=$(mktemp -d)
start_server "$dir"
run bench -q --server "$addr" -n 16 -s 256MiB -c 16 --server-pid "$pid"
kill "$pid"
wait "$pid" 2>/dev/null || true
rm -rf "$dir"

# Open time of a store holding 1,000,000 small blobs after a clean stop.
run bench -q -n 1000000 -s 1KiB -c 8 --phases put --no-fsync --reopen
