#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (two at a time on this 2-core
# machine) and prints executions and crashes per target.
#
#   fuzz/run.sh 60          # one minute per target
#   fuzz/run.sh 600 open    # ten minutes, one target
#
# It runs cargo in fuzz/, so .cargo/config.toml applies: crates from crates.io
# are built without coverage instrumentation (see rustc-wrapper.sh).
#
# The build has debug assertions and overflow checks on (-a) and, by default,
# AddressSanitizer. FUZZ_SANITIZER=none builds without a sanitizer, in
# fuzz/target-none/, for long runs: about six times more executions a second
# (see the README, *Fuzzing speed*); -malloc_limit_mb is then not enforced
# (libFuzzer needs the sanitizer's malloc hooks for it), but -rss_limit_mb is,
# and `structured` bounds its allocations itself.
#
# Crashes land in fuzz/artifacts/TARGET/. Each one found becomes a named
# regression input in fuzz/regressions/TARGET/ that `cargo test` replays.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(open open_encrypted header trailer index roundtrip elf_core structured)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
# Seed corpora from real images made by the writer.
cargo run -q --manifest-path ../Cargo.toml -p memimg-tests --example fuzz_seeds -- corpus
# ELF cores: a real gcore of a small process.
mkdir -p corpus/elf_core
if [ -z "$(ls -A corpus/elf_core)" ] && command -v gcore >/dev/null 2>&1; then
  sleep 30 & sp=$!
  gcore -o corpus/elf_core/gcore "$sp" >/dev/null 2>&1 || true
  kill "$sp" 2>/dev/null || true
fi
san=${FUZZ_SANITIZER:-address}
build=(-O -a -s "$san")
[ "$san" = address ] || build+=(--target-dir "target-$san")
export FUZZ_BUILD="${build[*]}"
cargo +nightly fuzz build "${build[@]}" "${targets[@]}" 2>/dev/null || for t in "${targets[@]}"; do cargo +nightly fuzz build "${build[@]}" "$t"; done
mkdir -p logs
run_one() {
  t=$1; secs=$2
  mkdir -p "corpus/$t" "artifacts/$t"
  # -malloc_limit_mb: one allocation over 64 MiB is a bug (the largest chunk is 16 MiB).
  # shellcheck disable=SC2086 # FUZZ_BUILD is a list of flags
  cargo +nightly fuzz run $FUZZ_BUILD "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=131072 \
    -rss_limit_mb=1024 -malloc_limit_mb=64 -print_final_stats=1 -timeout=10 > "logs/$t.log" 2>&1 || true
}
export -f run_one
printf '%s\n' "${targets[@]}" | xargs -P 2 -I{} bash -c "run_one {} $secs"
printf '%-16s %14s %8s %10s\n' target executions crashes seconds
for t in "${targets[@]}"; do
  execs=$(grep -ho 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  printf '%-16s %14s %8s %10s\n' "$t" "${execs:-0}" "$crashes" "$secs"
done
