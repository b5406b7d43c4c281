#!/bin/sh
# `npm pack` of bindings/node, installed into an empty directory with no
# cargo on PATH: it needs no install script, carries the prebuilt addon, and
# serves the Node example's contract in Node, then in Bun and Deno (from
# bindings/node/.runtimes, which `make test-npm-pack` installs) when present.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$here"
fail() { echo "FAIL: $*" >&2; exit 1; }

nocargo=$(printf '%s' "$PATH" | tr ':' '\n' | while read -r d; do
    [ -n "$d" ] && [ ! -e "$d/cargo" ] && [ ! -e "$d/rustc" ] && printf '%s:' "$d"; done)
nocargo=${nocargo%:}
if PATH=$nocargo command -v cargo >/dev/null 2>&1; then fail "cargo still on the stripped PATH"; fi

(cd bindings/node && npm pack --silent --pack-destination "$tmp" >"$tmp/packed")
tarball=$tmp/$(tail -n 1 "$tmp/packed")
[ -f "$tarball" ] || fail "npm pack made no tarball"
tar -tzf "$tarball" >"$tmp/contents"
grep -qx 'package/rcluster.linux-x64-gnu.node' "$tmp/contents" || fail "the tarball lacks the prebuilt addon"
grep -qx 'package/LICENSE' "$tmp/contents" || fail "the tarball lacks LICENSE"
if grep -Eq 'package/(src/|Cargo\.toml|build\.js)' "$tmp/contents"; then fail "the tarball ships build sources: $(cat "$tmp/contents")"; fi
echo "ok: $(basename "$tarball"), $(wc -c <"$tarball") bytes, $(wc -l <"$tmp/contents") files, prebuilt linux-x64-gnu addon"

# An empty app directory (type commonjs, as examples/node is, so Deno runs
# the example as CommonJS); the example copied in, so `require('rcluster')`
# resolves to the installed package only.
app=$tmp/app
mkdir "$app"
printf '{ "name": "app", "private": true, "type": "commonjs" }\n' >"$app/package.json"
cp examples/node/hello_server.js "$app/"
(cd "$app" && PATH=$nocargo npm install --no-audit --no-fund "$tarball" >"$tmp/install.log" 2>&1) \
    || { cat "$tmp/install.log"; fail "npm install of the tarball failed"; }
if grep -Eiq 'script|gyp|cargo' "$tmp/install.log"; then cat "$tmp/install.log"; fail "the install ran or warned about scripts"; fi
node -e '
const p = require(process.argv[1]);
const s = p.scripts || {};
for (const k of ["preinstall", "install", "postinstall"]) if (s[k]) { console.error(`FAIL: ${k} script`); process.exit(1); }
if (p.license !== "MIT") { console.error("FAIL: license " + p.license); process.exit(1); }
' "$app/node_modules/rcluster/package.json"
[ ! -L "$app/node_modules/rcluster" ] || fail "node_modules/rcluster is a symlink, not an install"
echo "ok: installed with no install script, no cargo on PATH"

cd "$app"
PATH=$nocargo timeout 120 python3 "$here/tests/install/serve_check.py" -- node hello_server.js
passed=1
bun=$here/bindings/node/.runtimes/node_modules/@oven/bun-linux-x64/bin/bun
deno=$here/bindings/node/.runtimes/node_modules/@deno/linux-x64-glibc/deno
if [ -x "$bun" ]; then
    PATH=$nocargo timeout 120 python3 "$here/tests/install/serve_check.py" -- "$bun" hello_server.js
    passed=$((passed + 1))
else echo "skip: bun not installed (make test-npm-pack installs it)"; fi
if [ -x "$deno" ]; then
    PATH=$nocargo timeout 120 python3 "$here/tests/install/serve_check.py" -- "$deno" run -A hello_server.js
    passed=$((passed + 1))
else echo "skip: deno not installed (make test-npm-pack installs it)"; fi
echo "npm_pack: $passed passed, 0 failed"
