#!/usr/bin/env bash
# The main job, from a fresh machine: start a real process, capture it with
# imgtool while it runs, and show the inspection of the image.
#
#   scripts/demo.sh            # captures a Python process that built a heap
#   scripts/demo.sh PID        # captures the process you name
#
# When moto_server is installed (scripts/setup.sh installs it), a last step
# copies the image to a local S3 server on a loopback port and inspects it
# there; without it, the step says it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p imgtool
bin=target/release/imgtool
out=$(mktemp -d)
cleanup() {
  [ -n "${moto:-}" ] && kill "$moto" 2>/dev/null
  [ -n "${child:-}" ] && kill "$child" 2>/dev/null
  rm -rf "$out"
}
trap 'cleanup || true' EXIT

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

# Optional: the same image in object storage. moto's S3 server runs on a
# free loopback port for this step only; nothing leaves 127.0.0.1.
remote_step() {
  local moto_cmd port ok=
  moto_cmd=$(command -v moto_server || ls "$HOME/.local/bin/moto_server" 2>/dev/null) || {
    echo "(skipped: moto_server is not installed; scripts/setup.sh installs it)"
    return 0
  }
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || return 1
  "$moto_cmd" -H 127.0.0.1 -p "$port" >"$out/moto.log" 2>&1 &
  moto=$!
  # Ready, and a bucket: moto needs no signature, only an Authorization
  # header to take the request as the bucket owner's.
  for _ in $(seq 150); do
    if python3 - "$port" 2>/dev/null <<'PY'
import sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
urllib.request.urlopen(base + "/moto-api/", timeout=2)
auth = "AWS4-HMAC-SHA256 Credential=demo/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"
urllib.request.urlopen(urllib.request.Request(base + "/memimg-demo", method="PUT", headers={"Authorization": auth}), timeout=10)
PY
    then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { echo "(skipped: moto_server did not answer on 127.0.0.1:$port)"; return 0; }
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
  echo "== imgtool cp proc.img s3://memimg-demo/proc.img   (AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL: moto)"
  "$bin" cp "$out/proc.img" s3://memimg-demo/proc.img || return 1
  echo
  echo "== imgtool inspect s3://memimg-demo/proc.img   (header and totals; it fetches the ends of the object, not the chunks)"
  IMGTOOL_REMOTE_STATS=1 "$bin" inspect s3://memimg-demo/proc.img >"$out/remote.txt" 2>"$out/remote.err" || {
    cat "$out/remote.err"
    return 1
  }
  sed -n '1,/^$/p' "$out/remote.txt"
  tail -n 1 "$out/remote.txt"
  cat "$out/remote.err"
  kill "$moto" 2>/dev/null
  wait "$moto" 2>/dev/null
  moto=
  return 0
}
echo
echo "== the image in object storage (a local moto server)"
remote_step || echo "(the object-storage step failed; the capture above stands)"
