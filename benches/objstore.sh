#!/bin/bash
# Object-store recovery figures of BENCHMARKS.md, side by side: the object store's own PUT rate
# (examples/s3_put_rate.rs), blobvault without recovery, blobvault with s3 recovery. Needs a SeaweedFS
# S3 gateway on 127.0.0.1:18333 with a bucket `blobs` and the credentials below; run from anywhere.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d); cd "$W"; trap 'rm -rf "$W"' EXIT
B=$ROOT/target/release/blobvault
R=$ROOT/target/release/examples/s3_put_rate
export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://127.0.0.1:18333} AWS_ALLOW_HTTP=true \
  AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-k1} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-s1-secret} \
  AWS_REGION=${AWS_REGION:-us-east-1}
bench() { local N=$1 S=$2 C=$3; shift 3; rm -rf $W/bl; $B serve --dir $W/bl -p 0 "$@" > $W/bo 2>$W/be & local P=$!; for i in $(seq 50); do grep -q listening $W/bo 2>/dev/null && break; sleep 0.2; done; local PORT=$(grep -oE '127.0.0.1:[0-9]+' $W/bo); $B bench --server $PORT -n $N -s $S -c $C --phases put -q 2>&1 | grep -E "^put" ; kill $P; wait $P 2>/dev/null; }
for round in 1 2 3; do
  echo "round $round 4KiB x8"
  echo -n "own:  "; $R s3://blobs/own$round 4000 4096 8
  echo -n "none: "; bench 4000 4KiB 8
  echo -n "s3:   "; bench 4000 4KiB 8 --recovery-dir s3://blobs/b$round
done
for round in 1 2 3; do
  echo "round $round 64MiB x1"
  echo -n "own:  "; $R s3://blobs/big$round 6 67108864 1
  echo -n "none: "; bench 6 64MiB 1
  echo -n "s3:   "; bench 6 64MiB 1 --recovery-dir s3://blobs/bb$round
done
