#!/bin/sh
# Programs built against rcluster 0.1's header (tests/abi/v0.1/rcluster.h, a
# frozen copy; its options struct has no struct_size) run on the library
# built now: fields.c checks the options field by field, and 0.1's C
# example serves the example contract (ready line, HTTP, exit 0 on SIGTERM).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$here"
CC=${CC:-cc}
old=tests/abi/v0.1
lib=target/release
for prog in fields hello_server; do
    $CC -std=c11 -Wall -Wextra -Werror -O2 -I"$old" "$old/$prog.c" -L"$lib" -lrcluster -lm -o "$tmp/$prog"
done
# The loader finds the library under test through LD_LIBRARY_PATH only.
export LD_LIBRARY_PATH="$here/$lib"
timeout 60 "$tmp/fields"
timeout 120 python3 tests/install/serve_check.py -- "$tmp/hello_server"
echo "abi_old_header: 2 passed, 0 failed"
