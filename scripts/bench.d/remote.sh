#!/usr/bin/env bash
# Images on object storage, against a local moto server (scripts/bench.sh
# runs this hook): bytes fetched by imgtool inspect and cat, capture to a URL
# against capture to a file then a boto3 upload, lazy restore from a URL
# against a download then an eager restore, peak RSS of reader and capture.
#
#   scripts/bench.d/remote.sh                  # 1 GiB, 5 runs: a quiet machine, ~4 GB free in /tmp
#   BENCH_SMALL=1 scripts/bench.d/remote.sh    # 64 MiB, 2 runs: a smoke test
#
# MEMIMG_REMOTE_BENCH_MIB, MEMIMG_REMOTE_BENCH_RUNS and MEMIMG_REMOTE_BENCH_DIR
# are described at the top of remote/benches/remote.rs. Needs root, moto_server
# and boto3 (scripts/setup.sh installs moto[server], which brings boto3).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${BENCH_SMALL:-}" ]; then
  export MEMIMG_REMOTE_BENCH_MIB=${MEMIMG_REMOTE_BENCH_MIB:-64}
  export MEMIMG_REMOTE_BENCH_RUNS=${MEMIMG_REMOTE_BENCH_RUNS:-2}
fi
# moto_server may sit in ~/.local/bin after a per-user pip install.
export PATH="$PATH:$HOME/.local/bin"
# The bench runs the release imgtool that sits beside it.
cargo build --release -q -p imgtool
cargo bench -q -p memimg-remote --bench remote
