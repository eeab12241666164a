#!/usr/bin/env bash
# Installs what the build, the tests and the demo need on a fresh machine.
# Idempotent: it installs only what is missing.
set -euo pipefail

need_apt=()
command -v gdb >/dev/null 2>&1 || need_apt+=(gdb)
command -v gcore >/dev/null 2>&1 || need_apt+=(gdb)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
command -v qemu-img >/dev/null 2>&1 || need_apt+=(qemu-utils)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install Rust with rustup first" >&2
  exit 2
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c" >/dev/null 2>&1 || echo "setup: could not add $c" >&2
  fi
done
