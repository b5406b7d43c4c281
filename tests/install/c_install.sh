#!/bin/sh
# `make install` into a temp prefix, then the C example built with nothing
# but pkg-config and run against the installed library: the contract of
# examples/README.md (ready line, HTTP bodies, exit 0 on SIGTERM).
#
# A standard prefix (/usr/local) is on the loader's path after the ldconfig
# that `make install` runs there; a temp prefix is not, so the run below sets
# LD_LIBRARY_PATH, and only that: the program has no RPATH/RUNPATH (checked),
# and without LD_LIBRARY_PATH it must fail to find librcluster.so.MAJOR
# (checked), so nothing else points it at the library.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$here"
CC=${CC:-cc}
fail() { echo "FAIL: $*" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
major=${version%%.*}
minor=${version#*.}; minor=${minor%%.*}
patch=${version##*.}

# 1. DESTDIR: a staged install keeps the final prefix in rcluster.pc.
make -s install PREFIX=/usr/local DESTDIR="$tmp/stage" >/dev/null
for f in lib/librcluster.so.$version lib/librcluster.so.$major lib/librcluster.so lib/librcluster.a \
         include/rcluster.h lib/pkgconfig/rcluster.pc; do
    [ -e "$tmp/stage/usr/local/$f" ] || fail "DESTDIR install lacks usr/local/$f"
done
grep -qx 'prefix=/usr/local' "$tmp/stage/usr/local/lib/pkgconfig/rcluster.pc" || fail "staged rcluster.pc does not say prefix=/usr/local"

# 2. The real install into a temp prefix.
prefix=$tmp/prefix
make -s install PREFIX="$prefix" >/dev/null
lib=$prefix/lib
[ "$(readlink "$lib/librcluster.so")" = "librcluster.so.$major" ] || fail "librcluster.so -> $(readlink "$lib/librcluster.so")"
[ "$(readlink "$lib/librcluster.so.$major")" = "librcluster.so.$version" ] || fail "librcluster.so.$major link"
soname=$(readelf -d "$lib/librcluster.so.$version" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "librcluster.so.$major" ] || fail "SONAME is '$soname', expected librcluster.so.$major"
if readelf -S "$lib/librcluster.so.$version" | grep -q '\.debug_info'; then fail "the shared library carries debug info"; fi
if readelf -S "$lib/librcluster.a" 2>/dev/null | grep -q '\.debug_info'; then fail "the static library carries debug info"; fi
echo "ok: installed librcluster.so.$version (SONAME $soname, no debug info), librcluster.a, rcluster.h, rcluster.pc"

export PKG_CONFIG_PATH="$lib/pkgconfig"
[ "$(pkg-config --modversion rcluster)" = "$version" ] || fail "pkg-config --modversion rcluster"

# 3. Version macros in the installed header agree with the library.
cat > "$tmp/version.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <rcluster.h>
int main(void) {
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", RCLUSTER_VERSION_MAJOR, RCLUSTER_VERSION_MINOR, RCLUSTER_VERSION_PATCH);
    printf("%s\n", want);
    return strcmp(want, rcluster_version()) != 0;
}
C
# Libraries after the sources: with --as-needed (Debian's and Ubuntu's
# default) a library named before the objects that use it is dropped.
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Werror $(pkg-config --cflags rcluster) "$tmp/version.c" $(pkg-config --libs rcluster) -o "$tmp/version"
got=$(LD_LIBRARY_PATH="$lib" "$tmp/version") || fail "header macros ($got) differ from rcluster_version()"
[ "$got" = "$major.$minor.$patch" ] || fail "RCLUSTER_VERSION_* say $got, Cargo.toml $version"
echo "ok: RCLUSTER_VERSION_* = $got = rcluster_version()"

# 4. The C example, built with pkg-config alone, serves its contract.
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Werror -O2 $(pkg-config --cflags rcluster) examples/c/hello_server.c \
    $(pkg-config --libs rcluster) -o "$tmp/hello_server"
if readelf -d "$tmp/hello_server" | grep -Eq 'RPATH|RUNPATH'; then fail "the example has an rpath"; fi
readelf -d "$tmp/hello_server" | grep -q "Shared library: \[librcluster.so.$major\]" || fail "the example does not need librcluster.so.$major"
if "$tmp/hello_server" --help >/dev/null 2>"$tmp/err"; then fail "ran without the library on the loader's path"; fi
grep -q "librcluster.so.$major" "$tmp/err" || fail "unexpected error without LD_LIBRARY_PATH: $(cat "$tmp/err")"
echo "ok: the example needs librcluster.so.$major, has no rpath, and does not start without it on the loader's path"
timeout 120 python3 tests/install/serve_check.py --env LD_LIBRARY_PATH="$lib" -- "$tmp/hello_server"

# 5. Linked statically from librcluster.a with pkg-config --static's libraries.
# shellcheck disable=SC2046
$CC -std=c11 -O2 $(pkg-config --cflags rcluster) examples/c/hello_server.c "$lib/librcluster.a" \
    $(pkg-config --static --libs-only-l rcluster | sed 's/-lrcluster//') -o "$tmp/hello_static"
if readelf -d "$tmp/hello_static" | grep -q librcluster; then fail "the static build still needs librcluster.so"; fi
timeout 120 python3 tests/install/serve_check.py -- "$tmp/hello_static"

# 6. DESTDIR uninstall removes what install put there.
make -s uninstall PREFIX=/usr/local DESTDIR="$tmp/stage" >/dev/null
[ -z "$(find "$tmp/stage" -type f -o -type l)" ] || fail "uninstall left $(find "$tmp/stage" -type f -o -type l)"
echo "c_install: 1 passed, 0 failed"
