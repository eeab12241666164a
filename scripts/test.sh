#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then
# runs every crate's tests, and checks the fuzz targets build (their
# regression inputs replay inside the tests crate). Ends with one line that
# sums the counts of every test binary: "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The C ABI's tests (capi/tests/c) also run their C program under valgrind
# (cc and its sanitizer runtime come with build-essential, from setup.sh).
if ! command -v valgrind >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null; } ||
    echo "test: could not install valgrind; the C ABI's valgrind test will skip" >&2
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
if [ -f fuzz/Cargo.toml ]; then
  # The fuzz workspace needs no nightly to type-check; building and running the
  # fuzzers does (see fuzz/run.sh).
  (cd fuzz && cargo check --quiet --bins) || status=$?
fi
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/) p += $i
         if ($(i+1) ~ /^failed/) f += $i
         if ($(i+1) ~ /^ignored/) s += $i
       }
     }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
