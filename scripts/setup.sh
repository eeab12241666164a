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
# readelf and nm: the C ABI's layout test reads the library's sections.
command -v readelf >/dev/null 2>&1 || need_apt+=(binutils)
command -v nm >/dev/null 2>&1 || need_apt+=(binutils)
# The C ABI's tests run their C programs under valgrind (cc and its sanitizer
# runtimes come with build-essential).
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The local S3-compatible server of the object-storage tests (memimg-remote)
# and the demo: moto's server, from PyPI. The tests also look for it in
# ~/.local/bin, where a per-user install puts it.
if ! command -v moto_server >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/moto_server" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "setup: installing python3-pip" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  echo "setup: installing moto[server] (moto_server) with pip" >&2
  # Debian's own Python refuses system-wide pip installs (PEP 668); then a
  # per-user install, which touches no Debian package, is used.
  python3 -m pip install -q --disable-pip-version-check 'moto[server]>=5,<6' 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --user --break-system-packages 'moto[server]>=5,<6'
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
