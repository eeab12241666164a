#!/usr/bin/env bash
# Images on object storage, against a local moto server (scripts/bench.sh
# runs this hook): bytes fetched by imgtool inspect and cat, capture to a URL
# against capture to a file then a boto3 upload, lazy restore from a URL
# against a download then an eager restore, peak RSS of reader and capture.
#
#   scripts/bench.d/remote.sh                  # 1 GiB, 5 runs: a quiet machine, ~4 GB free in /tmp
#   BENCH_SMALL=1 scripts/bench.d/remote.sh    # 64 MiB, 2 runs: a smoke test
#
# MEMIMG_REMOTE_BENCH_MIB, MEMIMG_REMOTE_BENCH_RUNS, MEMIMG_REMOTE_BENCH_DIR and
# MEMIMG_REMOTE_BENCH_SERVERS are described at the top of
# remote/benches/remote.rs. Needs root, moto_server and boto3
# (scripts/setup.sh installs moto[server], which brings boto3).
#
# The figures are also measured against s3s-fs, an S3 server in Rust that
# serves objects from files: this script installs it (cargo install, pinned,
# into target/tools, which it owns) the first time it runs, and only here:
# the tests use moto alone. Without network access the install fails and
# the bench says so and measures against moto alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${BENCH_SMALL:-}" ]; then
  export MEMIMG_REMOTE_BENCH_MIB=${MEMIMG_REMOTE_BENCH_MIB:-64}
  export MEMIMG_REMOTE_BENCH_RUNS=${MEMIMG_REMOTE_BENCH_RUNS:-2}
fi
# moto_server may sit in ~/.local/bin after a per-user pip install.
export PATH="$PATH:$HOME/.local/bin"
# s3s-fs for the second set of figures (S3S_FS_VERSION pins it).
S3S_FS_VERSION=${S3S_FS_VERSION:-0.14.1}
tools=$PWD/target/tools
if [ -z "${MEMIMG_REMOTE_BENCH_S3S_FS:-}" ]; then
  if [ ! -x "$tools/bin/s3s-fs" ]; then
    echo "remote.sh: installing s3s-fs $S3S_FS_VERSION into $tools (once)" >&2
    cargo install -q s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --root "$tools" \
      || echo "remote.sh: s3s-fs could not be installed: figures against moto alone" >&2
  fi
  if [ -x "$tools/bin/s3s-fs" ]; then
    export MEMIMG_REMOTE_BENCH_S3S_FS=$tools/bin/s3s-fs
  fi
fi
# The bench runs the release imgtool that sits beside it.
cargo build --release -q -p imgtool
cargo bench -q -p memimg-remote --bench remote
