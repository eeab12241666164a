#!/usr/bin/env bash
# Incremental images (issue 12): child size, capture, persist and chain
# restore against their full counterparts, 1 GiB with 1% of pages changed
# (MEMIMG_BENCH_INCR_MIB, MEMIMG_BENCH_RUNS). BENCH_SMALL=1 runs 64 MiB once.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${BENCH_SMALL:-}" ]; then
  export MEMIMG_BENCH_INCR_MIB=${MEMIMG_BENCH_INCR_MIB:-64}
  export MEMIMG_BENCH_RUNS=${MEMIMG_BENCH_RUNS:-1}
fi
exec cargo bench -p memimg-capture --bench incremental
