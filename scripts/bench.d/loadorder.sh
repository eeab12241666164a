#!/usr/bin/env bash
# Load order (issue 13): the arena example's startup-like lookups, restored
# lazily from a plain image and from the image laid out by the profile those
# lookups recorded, and eagerly; the page cache is dropped before each
# startup (root only: the log says when it could not be). Prints @@BENCH lines
# for scripts/bench.sh.
#
#   scripts/bench.d/loadorder.sh                    # 3,000,000 keys, 5 runs each
#   BENCH_SMALL=1 scripts/bench.d/loadorder.sh      # 200,000 keys, 2 runs
#   LOADORDER_PROFILE=dev scripts/bench.d/loadorder.sh   # without a release build
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${BENCH_SMALL:-}" ]; then
  export ARENA_N=${ARENA_N:-200000}
  export ARENA_RUNS=${ARENA_RUNS:-2}
fi
export ARENA_RUNS=${ARENA_RUNS:-5}
export ARENA_PHASE=loadorder ARENA_DROP_CACHES=1 ARENA_BENCH=1
profile=${LOADORDER_PROFILE:-release}
exec cargo run -q --profile "$profile" -p memimg-capture --example arena
