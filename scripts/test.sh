#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then
# runs every crate's tests, and checks the fuzz targets build (their
# regression inputs replay inside the tests crate). Ends with one line that
# sums the counts of every test binary: "N passed, N failed, N skipped".
#
# Skipped counts the tests libtest ignored (#[ignore]) and the tests that
# could not run here and said so through the skip protocol: they append
# "TEST<TAB>WHY" to $MEMIMG_SKIP_LOG (set here to a temporary file) and
# return, so libtest counts them as passed; they are moved from passed to
# skipped, and listed above the summary. With MEMIMG_REQUIRE_ALL=1 (CI) such
# a test fails instead of skipping.
#
# Every test binary runs even after one fails (--no-fail-fast), so the
# summary counts them all.
#
# Arguments, if any, replace `--workspace --no-fail-fast` (scripts/test.sh -p imgtool --test
# cli runs one test binary, with the same summary), and the fuzz check is left
# out.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
export MEMIMG_SKIP_LOG="$skips"
status=0
if [ $# -gt 0 ]; then
  cargo test "$@" 2>&1 | tee "$log" || status=$?
else
  cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
fi
if [ $# -eq 0 ] && [ -f fuzz/Cargo.toml ]; then
  # The fuzz workspace needs no nightly to type-check; building and running the
  # fuzzers does (see fuzz/run.sh).
  (cd fuzz && cargo check --quiet --bins) || status=$?
fi
# A test that logged several skips is still one test.
skipped_tests=$(cut -f1 "$skips" | sort -u | grep -c . || true)
if [ -s "$skips" ]; then
  echo
  echo "skipped (could not run here):"
  sort -u "$skips" | awk -F'\t' '{ printf "  %s: %s\n", $1, $2 }'
fi
awk -v logged="$skipped_tests" '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/) p += $i
         if ($(i+1) ~ /^failed/) f += $i
         if ($(i+1) ~ /^ignored/) s += $i
       }
     }
     END { printf "%d passed, %d failed, %d skipped\n", p - logged, f, s + logged }' "$log"
exit "$status"
