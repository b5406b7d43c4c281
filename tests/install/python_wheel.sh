#!/bin/sh
# The wheel from `make wheel` installs into a fresh venv on a PATH with no
# cargo (so nothing can compile) in seconds and serves the Python example's
# contract; a source build with no cargo fails at once with one sentence and
# downloads no toolchain.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$here"
fail() { echo "FAIL: $*" >&2; exit 1; }

wheel=$(ls target/wheels/rcluster_core-*-py3-none-manylinux_*_x86_64.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || fail "no manylinux wheel in target/wheels (make wheel)"

unzip -l "$wheel" | grep -q 'dist-info/licenses/LICENSE$' || fail "the wheel carries no LICENSE"
unzip -p "$wheel" '*.dist-info/METADATA' | grep -qx 'License: MIT' || fail "the wheel's metadata does not say License: MIT"

# PATH without any directory holding cargo or rustc.
nocargo=$(printf '%s' "$PATH" | tr ':' '\n' | while read -r d; do
    [ -n "$d" ] && [ ! -e "$d/cargo" ] && [ ! -e "$d/rustc" ] && printf '%s:' "$d"; done)
nocargo=${nocargo%:}
if PATH=$nocargo command -v cargo >/dev/null 2>&1; then fail "cargo still on the stripped PATH"; fi
python=$(command -v "${PYTHON:-python3}")
"$python" -m venv "$tmp/venv"

start=$(date +%s)
PATH=$nocargo "$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "$wheel"
took=$(( $(date +%s) - start ))
[ "$took" -le 60 ] || fail "installing the wheel took ${took}s"
(cd "$tmp" && PATH=$nocargo "$tmp/venv/bin/python" -c 'import rcluster, importlib.metadata as m; print("ok: rcluster-core", m.version("rcluster-core"), "imports as", rcluster.__name__)')
echo "ok: $(basename "$wheel") installed without cargo in ${took}s"
PATH=$nocargo timeout 120 "$tmp/venv/bin/python" tests/install/serve_check.py -- "$tmp/venv/bin/python" examples/python/hello_server.py

# A source build without cargo: one clear sentence, no toolchain download.
"$python" -m venv "$tmp/src"
if PATH=$nocargo "$tmp/src/bin/pip" install --disable-pip-version-check --no-cache-dir ./bindings/python >"$tmp/src.log" 2>&1; then
    fail "a source build without cargo succeeded"
fi
grep -q "rcluster-core: building from source needs Rust's cargo on PATH" "$tmp/src.log" || { cat "$tmp/src.log"; fail "no clear sentence"; }
if grep -qi "puccinialin\|installing into a temporary directory" "$tmp/src.log"; then cat "$tmp/src.log"; fail "it tried to fetch a toolchain"; fi
echo "ok: a source build without cargo stops with: $(grep -o "rcluster-core: building from source[^)]*)" "$tmp/src.log" | head -n 1)"
echo "python_wheel: 1 passed, 0 failed"
