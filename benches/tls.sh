#!/usr/bin/env bash
# TLS beside plaintext, alternating in one run (the machine is shared and noisy: only the ratios
# side by side mean something): 4 KiB PUT and GET over 8 connections, and a 256 MiB GET over one,
# against two `blobvault serve` processes of the same binary, one plaintext and one with TLS.
# Usage: benches/tls.sh [BINARY] [ROUNDS]
set -euo pipefail
BIN=${1:-target/release/blobvault}; ROUNDS=${2:-3}
export RUST_LOG=warn
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# A throwaway CA and a server certificate for 127.0.0.1 (ECDSA P-256, as rcgen makes them).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -days 2 \
  -CAcreateserial -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null

start() { # NAME ARGS… → prints the address
  "$BIN" serve --port 0 --dir "$work/$1" "${@:2}" > "$work/$1.out" 2> "$work/$1.log" &
  echo $! > "$work/$1.pid"
  for _ in $(seq 100); do grep -q "listening on" "$work/$1.out" 2>/dev/null && break; sleep 0.1; done
  sed -n 's/listening on //p' "$work/$1.out"
}
plain=$(start plain); tls=$(start tls --tls-cert "$work/server.pem" --tls-key "$work/server.key")
# The last column is each server's CPU time per request (its process, from /proc): robust where
# throughput on a shared 2-core machine is not.
P=(--server "$plain" --server-pid "$(cat "$work/plain.pid")")
T=(--server "$tls" --server-pid "$(cat "$work/tls.pid")" --tls-ca "$work/ca.pem")
echo "date: $(date -u +%Y-%m-%dT%H:%MZ) nproc: $(nproc) load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "plaintext $plain (pid $(cat "$work/plain.pid")), TLS $tls (pid $(cat "$work/tls.pid"))"
for i in $(seq "$ROUNDS"); do
  echo "== round $i: 4 KiB x 20000, 8 connections"
  "$BIN" bench -q "${P[@]}" -n 20000 -s 4KiB -c 8 --phases put,get,delete 2>&1 | grep -E "^ *(put|get|delete)" | sed 's/^/plain /'
  "$BIN" bench -q "${T[@]}" -n 20000 -s 4KiB -c 8 --phases put,get,delete 2>&1 | grep -E "^ *(put|get|delete)" | sed 's/^/tls   /'
done
for i in $(seq "$ROUNDS"); do
  echo "== round $i: 256 MiB, 1 connection, GET x4"
  "$BIN" bench -q "${P[@]}" -n 1 -s 256MiB -c 1 --phases put,get,delete --get-rounds 4 2>&1 | grep -E "^ *(put|get)" | sed 's/^/plain /'
  "$BIN" bench -q "${T[@]}" -n 1 -s 256MiB -c 1 --phases put,get,delete --get-rounds 4 2>&1 | grep -E "^ *(put|get)" | sed 's/^/tls   /'
done
