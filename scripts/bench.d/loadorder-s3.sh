#!/usr/bin/env bash
# Load order from object storage (issue 13): the arena example's startup-like
# lookups restored from a local S3 server (moto, and s3s-fs when set up as in
# remote.sh) lazily from a plain image, lazily from the image laid out by the
# profile those lookups recorded (working set before returning, and in the
# background), and eagerly: time to the first and to the last answer, faults
# waited, GETs. Prints @@BENCH lines for scripts/bench.sh. The load-order
# section of remote/benches/remote.rs (MEMIMG_REMOTE_BENCH_ONLY=loadorder).
#
#   scripts/bench.d/loadorder-s3.sh                  # 3,000,000 keys, 5 runs
#   BENCH_SMALL=1 scripts/bench.d/loadorder-s3.sh    # 200,000 keys, 2 runs
#   ARENA_RUNS=3 MEMIMG_REMOTE_BENCH_SERVERS=moto scripts/bench.d/loadorder-s3.sh
#
# ARENA_N, ARENA_SAMPLE, ARENA_RUNS and MEMIMG_REMOTE_BENCH_EAGER_RUNS (1:
# eager makes one GET per chunk, minutes against moto) are described at the
# top of remote/benches/remote.rs. Needs userfaultfd and moto_server
# (scripts/setup.sh installs moto[server]).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${BENCH_SMALL:-}" ]; then
  export ARENA_N=${ARENA_N:-200000}
  export ARENA_RUNS=${ARENA_RUNS:-2}
fi
export ARENA_RUNS=${ARENA_RUNS:-5}
# moto_server may sit in ~/.local/bin after a per-user pip install.
export PATH="$PATH:$HOME/.local/bin"
# s3s-fs only when remote.sh installed it, and only if asked for: this
# script installs nothing.
tools=$PWD/target/tools
if [ -z "${MEMIMG_REMOTE_BENCH_S3S_FS:-}" ] && [ -x "$tools/bin/s3s-fs" ]; then
  export MEMIMG_REMOTE_BENCH_S3S_FS=$tools/bin/s3s-fs
fi
export MEMIMG_REMOTE_BENCH_ONLY=loadorder
exec cargo bench -q -p memimg-remote --bench remote
