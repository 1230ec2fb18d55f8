#!/usr/bin/env bash
# Real-client test suite: runs kafka-python, confluent-kafka (librdkafka), aiokafka and kcat
# against the `lode` binary. Idempotent set-up on a fresh Debian machine (as root), then pytest.
#
#   bash tests/clients/run.sh [extra pytest args]
#
# LODE_BIN defaults to $REPO/target/debug/lode. This script does NOT build it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv-clients"
PY_PACKAGES=(
  kafka-python==3.0.12
  confluent-kafka==2.16.1
  aiokafka==0.14.0
  pytest
  pytest-timeout
  # Compression codecs: kafka-python 3.0 declares them as extras (snappy -> python-snappy,
  # lz4 -> lz4, zstd -> zstandard); aiokafka 0.14 uses cramjam for snappy/lz4/zstd.
  python-snappy==0.7.3
  lz4==4.4.5
  zstandard==0.25.0
  cramjam==2.14.0
)

if ! command -v kcat >/dev/null 2>&1; then
  echo "==> installing kcat (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
# The virtualenv ignores itself, so it never shows up in `git status`.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"

echo "==> installing Python packages into $VENV: ${PY_PACKAGES[*]}"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"

export LODE_BIN="${LODE_BIN:-$REPO/target/debug/lode}"
if [ ! -x "$LODE_BIN" ]; then
  echo "error: lode binary not found at $LODE_BIN (build it first: cargo build -p lode-cli)" >&2
  exit 1
fi
echo "==> running client tests against $LODE_BIN"

rc=0
"$VENV/bin/python" -m pytest -q tests/clients "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
