#!/usr/bin/env bash
# A/B of two builds, alternating in one run (the machine is shared and noisy: only the ratios
# side by side mean something). Usage: benches/before_after.sh OLD_BINARY NEW_BINARY
set -euo pipefail
A=${1:?old binary}; B=${2:?new binary}
export RUST_LOG=warn
echo "date: $(date -u +%Y-%m-%dT%H:%MZ) nproc: $(nproc) load: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in 1 2 3; do
  for bin in $A $B; do
    echo "== $bin small"; $bin bench -q -n 20000 -s 4KiB -c 8 --phases put,get 2>&1 | grep -E "put|get" 
  done
done
for i in 1 2; do
  for bin in $A $B; do
    echo "== $bin large"; $bin bench -q -n 1 -s 256MiB -c 1 --phases put,get --get-rounds 4 2>&1 | grep -E "put|get"
  done
done
