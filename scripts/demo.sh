#!/usr/bin/env bash
# The main job, from a fresh machine: start a real process, capture it with
# imgtool while it runs, and show the inspection of the image.
#
#   scripts/demo.sh            # captures a Python process that built a heap
#   scripts/demo.sh PID        # captures the process you name
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p imgtool
bin=target/release/imgtool
out=$(mktemp -d)
trap 'rm -rf "$out"; [ -n "${child:-}" ] && kill "$child" 2>/dev/null || true' EXIT

if [ $# -ge 1 ]; then
  pid=$1
else
  # A real process with a real heap: Python building a dictionary of strings.
  python3 -c '
import sys, time
d = {f"key-{i}": "value-" * (i % 7) + str(i) for i in range(200000)}
print("ready", flush=True)
time.sleep(600)
' > "$out/child.log" &
  child=$!
  for _ in $(seq 100); do grep -q ready "$out/child.log" 2>/dev/null && break; sleep 0.1; done
  pid=$child
fi

echo "== imgtool capture --pid $pid"
"$bin" capture --pid "$pid" -o "$out/proc.img"
echo
echo "== imgtool inspect"
"$bin" inspect "$out/proc.img"
echo
echo "== imgtool verify"
"$bin" verify "$out/proc.img"
