#!/usr/bin/env bash
# The rustc wrapper of the fuzz workspace (.cargo/config.toml): cargo runs it
# as `rustc-wrapper.sh RUSTC ARGS...` for every crate it compiles.
#
# It builds crates from outside this repository (crates.io: xxhash-rust,
# chacha20, poly1305, zstd, rayon, binrw, clap...) without libFuzzer's
# coverage instrumentation (SanitizerCoverage: edge counters, comparison
# tracing, stack depth), and leaves our own crates (memimg, memimg-tests,
# imgtool, the targets) as cargo fuzz builds them. Every crate keeps the
# sanitizer (AddressSanitizer by default) and `--cfg fuzzing`.
#
# Why: with every crate instrumented, the `roundtrip` and `structured`
# targets spent most of their time in the instrumented loops of xxh3,
# Poly1305 and ChaCha20, which give the fuzzer no signal about the reader,
# and libFuzzer scanned the counters of every crate after every input.
# Generic code of a dependency that our crates instantiate (binrw's readers,
# Vec, iterators) is compiled into our crates and stays instrumented.
#
# MEMIMG_FUZZ_INSTRUMENT_ALL=1 passes every flag through, as plain cargo fuzz
# does; cargo does not see the variable, so give it a --target-dir of its
# own (run.sh does not use it).
set -euo pipefail
rustc=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ours=1
if [ -z "${MEMIMG_FUZZ_INSTRUMENT_ALL:-}" ]; then
  for a in "$@"; do
    case $a in
      *.rs)
        # Workspace members come as relative paths, path dependencies as
        # absolute paths inside the repository.
        case $a in
          /*) case $a in "$repo"/*) ;; *) ours=0 ;; esac ;;
        esac
        break
        ;;
    esac
  done
fi
if [ "$ours" = 1 ]; then
  exec "$rustc" "$@"
fi
args=()
prev=
for a in "$@"; do
  case $a in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-* | -Cllvm-args=-simplifycfg-branch-fold-threshold=*) continue ;;
    -C)
      # The same flags given as two arguments: `-C passes=sancov-module`.
      prev=$a
      continue
      ;;
  esac
  if [ "$prev" = -C ]; then
    prev=
    case $a in
      passes=sancov-module | llvm-args=-sanitizer-coverage-* | llvm-args=-simplifycfg-branch-fold-threshold=*) continue ;;
    esac
    args+=(-C "$a")
    continue
  fi
  args+=("$a")
done
exec "$rustc" "${args[@]}"
