#!/usr/bin/env bash
# Regenerates capi/layout/hot.ld, the order of libmemimg's restore path.
#
#   capi/layout/regen.sh
#
# Builds libmemimg.so (release), persists a small image raw and with zstd
# through the C ABI (restore_once.c), traces the functions a first
# memimg_restore() runs with each strategy (mmap, lazy, eager: gdb,
# first_calls.py), and writes the linker script (mkld.py). Run it after
# changing the restore path; `cargo test -p memimg-capi` fails when the
# script names C entry points the library no longer has. Needs gdb,
# python3, nm (binutils) and cc; run as root or where userfaultfd works
# (otherwise the lazy trace is the eager one's open path only).
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in gdb python3 nm cc; do
    command -v "$tool" >/dev/null || { echo "regen.sh: $tool is not installed" >&2; exit 1; }
done
cargo build --release -p memimg-capi
lib=$PWD/target/release/libmemimg.so
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -O2 -Wall -I capi/include capi/layout/restore_once.c -o "$tmp/restore_once" \
    -L target/release -lmemimg -Wl,-rpath,"$PWD/target/release"
"$tmp/restore_once" persist "$tmp"
for strategy in mmap lazy eager; do
    img=$tmp/zstd.img
    [ "$strategy" = mmap ] && img=$tmp/raw.img
    GTRACE_OUT=$tmp/$strategy GTRACE_LIB=$lib gdb -q -batch -x capi/layout/first_calls.py \
        --args "$tmp/restore_once" restore "$strategy" "$img" >"$tmp/$strategy.log" 2>&1 || true
    # gdb -batch exits 0 after a Python error: the trace file tells.
    [ -s "$tmp/$strategy" ] || {
        cat "$tmp/$strategy.log" >&2
        echo "regen.sh: tracing the $strategy restore failed" >&2
        exit 1
    }
    echo "regen.sh: $strategy restore ran $(wc -l <"$tmp/$strategy") functions of libmemimg.so"
done
python3 capi/layout/mkld.py "$lib" "$tmp/mmap" "$tmp/lazy" "$tmp/eager" >"$tmp/hot.ld"
mv "$tmp/hot.ld" capi/layout/hot.ld
echo "regen.sh: wrote capi/layout/hot.ld; rebuild to use it"
