#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine: installs what it needs,
# then runs formatting, lints, the workspace tests, the fuzz corpus replay and the
# simulation build's tests. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "toolchain"
cargo --version
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "tests"
cargo test --workspace --all-features --locked

step "real Kafka clients (kafka-python, confluent-kafka, aiokafka, kcat) against lode"
cargo build -p lode-cli --locked
bash tests/clients/run.sh

step "simulation build (--cfg madsim, own target dir)"
# The simulator and the tests that exist only under madsim. A separate target dir keeps
# the two configurations from rebuilding each other.
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim \
  cargo clippy -p lode-env -p lode-storage -p lode-broker -p lode-client -p lode-sim --all-targets --all-features --locked -- -D warnings
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim \
  cargo test -p lode-env -p lode-storage -p lode-broker -p lode-client -p lode-sim --all-features --locked

step "simulator sweep: seeds 1000..7000 and 3,000 seeds that move with the commit (about 10 minutes), determinism across processes"
# Release build, two seeds at a time: about 60 ms of wall time per seed. The fixed range
# guards what earlier sweeps passed; the moving one covers new ground on every change: its
# start is drawn from the commit id (from the clock outside a git checkout), within
# 1,000,000..101,000,000, and printed; rerun a failure with `lode-sim run --seed N`. A
# failing seed's log is kept in target-madsim/sweep/ and the step fails with the command
# that reproduces it. Each range prints its coverage table (docs/SIMULATION.md). Nightly:
# the same command over 0..1000000 (docs/SIMULATION.md, "Nightly").
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim \
  cargo build --release -p lode-sim --all-features --locked
mkdir -p target-madsim/sweep
moving_key=$(git rev-parse HEAD 2>/dev/null || date +%s%N)
moving_from=$(( 1000000 + $(printf '%s' "$moving_key" | cksum | cut -d' ' -f1) % 100000 * 1000 ))
moving_to=$(( moving_from + 3000 ))
echo "moving range: seeds $moving_from..$moving_to (from $moving_key)"
(cd target-madsim/sweep && ../release/lode-sim explore --seeds 1000..7000 --jobs 2)
(cd target-madsim/sweep && ../release/lode-sim explore --seeds "$moving_from..$moving_to" --jobs 2)
for seed in 3 17 42; do
  target-madsim/release/lode-sim check-determinism --seed "$seed"
done

step "planted bugs: the swarm finds each within its stated seed budget"
# `explore --planted NAME --seeds 0..BUDGET --first-failure` must exit non-zero with a
# violation (not a crash). The budgets are docs/SIMULATION.md's, with margin: a bug the
# swarm finds in 3 seeds of 1000 gets 2000.
(
  cd target-madsim/sweep
  for spec in truncate-to-hw:10 hw-below-min-isr:10 isr-without-epoch-start:60 \
    stale-alter-partition:2000 ack-before-sync:10 elect-outside-isr:40 read-above-hw:5 \
    commit-before-replicated:5 consumer-forgets-partition:20 ignore-sync-failure:200 \
    hw-applied-late:3000 delete-in-place:60 commit-any-generation:60; do
    bug=${spec%%:*}
    budget=${spec#*:}
    if out=$(../release/lode-sim explore --planted "$bug" --seeds "0..$budget" --jobs 2 --first-failure 2>/dev/null); then
      echo "$out"
      echo "planted bug $bug went unnoticed in seeds 0..$budget" >&2
      exit 1
    fi
    if ! grep -q "FAILED: VIOLATION" <<<"$out"; then
      echo "$out"
      echo "planted bug $bug: a seed failed without a violation (a crash?)" >&2
      exit 1
    fi
    echo "$bug: $(grep -m1 "FAILED: VIOLATION" <<<"$out" | cut -c1-160)"
  done
  rm -f lode-sim-seed-*.log
)

step "done in $(( $(date +%s) - started ))s"
