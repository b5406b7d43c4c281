# rcluster: `make demo` runs a cluster on port 8080, `make test` runs every test.
# Everything a fresh machine needs (Python venv, npm packages) is installed by
# the targets that need it.

CARGO   ?= cargo
CC      ?= gcc
CFLAGS  ?= -std=c11 -Wall -Wextra -Werror -O2
RELEASE := target/release
LIB     := $(RELEASE)/librcluster.so
# C programs find librcluster.so next to them (or one level up) without LD_LIBRARY_PATH.
C_LINK  := -Iinclude -L$(RELEASE) -lrcluster

.PHONY: all lib header examples demo test test-rust test-tools test-c python test-python node test-node test-queue queue-deps queue-servers bench bench-quick clean cli-test-deps \
	install uninstall test-install test-abi wheel test-wheel test-npm-pack

all: lib examples

# The library and the `rcluster` command (target/release/rcluster;
# `cargo install --path . --bin rcluster` installs it). The library's SONAME
# is librcluster.so.MAJOR (build.rs): programs linked here with -lrcluster
# look for that name, so it sits beside the build too.
lib:
	$(CARGO) build --release
	ln -sfn librcluster.so $(RELEASE)/librcluster.so.$(MAJOR)

# build.rs regenerates include/rcluster.h on every build of the crate.
header:
	$(CARGO) build

$(LIB): lib

examples: lib
	$(CARGO) build --release --examples
	$(CC) $(CFLAGS) examples/c/hello_server.c $(C_LINK) -Wl,-rpath,'$$ORIGIN/..' -o $(RELEASE)/examples/hello_server_c
	$(CC) $(CFLAGS) examples/c/minimal.c $(C_LINK) -Wl,-rpath,'$$ORIGIN/..' -o $(RELEASE)/examples/minimal_c

demo: examples
	$(RELEASE)/examples/hello_server_c --port 8080

test: test-rust test-c test-python test-node test-queue test-install test-abi test-wheel test-npm-pack

# tests/cli_apps.rs runs the README's recipes with the real servers: an
# unmodified uvicorn (PyPI) and Express app (npm), installed here under
# target/cli-deps (with pm2, which `make bench` compares against).
CLI_DEPS := target/cli-deps

$(CLI_DEPS)/.installed:
	test -x $(CLI_DEPS)/venv/bin/python || $(PYTHON) -m venv $(CLI_DEPS)/venv
	$(CLI_DEPS)/venv/bin/pip install --quiet 'uvicorn>=0.30,<1'
	$(NPM) install --prefix $(CLI_DEPS)/npm --no-save --no-audit --no-fund express@5 pm2@7
	touch $@

cli-test-deps: $(CLI_DEPS)/.installed

# tests/cli_apps.rs also runs the Python and Node example servers under
# `rcluster run`, so the bindings are built first.
test-rust: test-tools cli-test-deps python node
	RCLUSTER_TEST_PYTHON_BIN=$(abspath $(CLI_DEPS)/venv/bin) \
	RCLUSTER_TEST_NODE_PATH=$(abspath $(CLI_DEPS)/npm/node_modules) \
	RCLUSTER_TEST_BINDING_PYTHON=$(abspath $(VENV)/bin/python) RCLUSTER_TEST_BINDING_NODE=1 \
	$(CARGO) test --all-targets

# The real servers the Rust tests drive, installed when missing (as root):
# systemd-socket-activate (Debian's systemd) stands in for systemd in
# tests/systemd.rs; nginx balances two hosts in tests/nginx.rs.
TEST_PACKAGES := systemd-socket-activate:systemd /usr/sbin/nginx:nginx
test-tools:
	@for pair in $(TEST_PACKAGES); do \
		tool=$${pair%%:*}; package=$${pair##*:}; \
		command -v $$tool >/dev/null || [ -x $$tool ] || { [ "$$(id -u)" = 0 ] && \
			(apt-get install -y --no-install-recommends $$package || (apt-get update && apt-get install -y --no-install-recommends $$package)); } \
			|| { echo "test: $$tool is missing: apt-get install $$package" >&2; exit 1; }; \
	done

test-c: lib
	$(CC) $(CFLAGS) tests/c/raw_fork.c $(C_LINK) -Wl,-rpath,'$$ORIGIN' -o $(RELEASE)/raw_fork_test
	timeout 60 $(RELEASE)/raw_fork_test
	$(CC) $(CFLAGS) tests/c/send_handle.c $(C_LINK) -Wl,-rpath,'$$ORIGIN' -o $(RELEASE)/send_handle_test
	timeout 60 $(RELEASE)/send_handle_test

# C: `make install PREFIX=/usr/local [DESTDIR=...]` installs the shared
# library as librcluster.so.X.Y.Z (SONAME librcluster.so.X, set by build.rs)
# with its two symlinks, librcluster.a, rcluster.h and rcluster.pc, so
# `cc server.c $$(pkg-config --cflags --libs rcluster)` builds a program that
# needs no rpath. By hand rather than cargo-c: cargo-c is not on this machine
# and `cargo install cargo-c` compiles for many minutes, while the library
# needs only a SONAME (one link argument in build.rs) and four files copied.
VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR        := $(word 1,$(subst ., ,$(VERSION)))
PREFIX       ?= /usr/local
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
# What librcluster.a needs besides libc (rustc --print native-static-libs).
STATIC_LIBS  := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

install: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 755 $(LIB) $(DESTDIR)$(LIBDIR)/librcluster.so.$(VERSION)
	ln -sfn librcluster.so.$(VERSION) $(DESTDIR)$(LIBDIR)/librcluster.so.$(MAJOR)
	ln -sfn librcluster.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/librcluster.so
	install -m 644 $(RELEASE)/librcluster.a $(DESTDIR)$(LIBDIR)/librcluster.a
	@# Cargo's strip applies to linked files only; the archive holds std's debug info.
	strip --strip-debug $(DESTDIR)$(LIBDIR)/librcluster.a
	install -m 644 include/rcluster.h $(DESTDIR)$(INCLUDEDIR)/rcluster.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
		-e 's|@VERSION@|$(VERSION)|' -e 's|@STATIC_LIBS@|$(STATIC_LIBS)|' rcluster.pc.in \
		> $(DESTDIR)$(PKGCONFIGDIR)/rcluster.pc
	@# The loader finds a new library in /usr/local/lib only through its cache.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null \
		&& ldconfig -v -N 2>/dev/null | grep -q '^$(LIBDIR):'; then ldconfig; fi

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/librcluster.so.$(VERSION) $(DESTDIR)$(LIBDIR)/librcluster.so.$(MAJOR) \
		$(DESTDIR)$(LIBDIR)/librcluster.so $(DESTDIR)$(LIBDIR)/librcluster.a \
		$(DESTDIR)$(INCLUDEDIR)/rcluster.h $(DESTDIR)$(PKGCONFIGDIR)/rcluster.pc

# make install into a temp prefix, then the C example built with pkg-config alone.
test-install: lib
	tests/install/c_install.sh

# A program built against 0.1's header (tests/abi/v0.1/) runs on this library.
test-abi: lib
	tests/abi/old_header.sh

# Python: .venv with the rcluster package (pip builds the Rust library through
# maturin and bundles it: no LD_LIBRARY_PATH), pytest, and the servers the
# tests run real apps on (bindings/python/tests/test_servers.py: FastAPI on
# uvicorn workers, Flask on gunicorn workers; the bench compares them too).
PYTHON ?= python3
VENV   := .venv
PY_SERVERS := fastapi uvicorn flask gunicorn

$(VENV)/.rcluster-installed: Cargo.toml build.rs $(wildcard src/*.rs src/*/*.rs src/*/*/*.rs) \
		bindings/python/pyproject.toml $(wildcard bindings/python/python/rcluster/*)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@# prometheus_client: the metrics tests read the endpoint with its own parser.
	$(VENV)/bin/pip install --quiet ./bindings/python pytest prometheus_client $(PY_SERVERS)
	touch $@

python: $(VENV)/.rcluster-installed

# `make wheel`: target/wheels/rcluster_core-VERSION-py3-none-manylinux_2_34_x86_64.whl,
# which installs without Rust. The tag is what this build needs: the library
# links glibc symbols up to GLIBC_2.34 (pthread_* moved into libc there), and
# maturin's built-in auditwheel check refuses a lower tag. It installs on
# glibc >= 2.34 (Debian 12, Ubuntu 22.04, RHEL 9 and later); reaching older
# systems would mean linking against an older glibc (maturin --zig, or a
# manylinux2014 build image), a toolchain this repository does not carry.
# Only libc and libgcc_s are needed, both allowed by the manylinux policy, so
# nothing is grafted in and no patchelf is needed.
MANYLINUX  := manylinux_2_34
BUILD_VENV := target/build-venv
WHEEL_DIR  := target/wheels

$(BUILD_VENV)/.installed:
	test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/pip install --quiet "maturin>=1.5,<2" "cffi>=1.15"
	touch $@

wheel: $(BUILD_VENV)/.installed
	rm -f $(WHEEL_DIR)/rcluster_core-*.whl
	cd bindings/python && ../../$(BUILD_VENV)/bin/maturin build --release --compatibility $(MANYLINUX) \
		--interpreter ../../$(BUILD_VENV)/bin/python --out ../../$(WHEEL_DIR)

# The wheel in a fresh venv with no cargo on PATH serves the Python example;
# a source build without cargo fails with one sentence, downloading nothing.
test-wheel: wheel
	tests/install/python_wheel.sh

test-python: python
	$(VENV)/bin/python -m pytest bindings/python/tests -q

# Node: the napi-rs addon, built with the napi-rs CLI (`napi build
# --platform --release`, a devDependency the package's `npm install` brings;
# no node-gyp, no header download) into rcluster.linux-x64-gnu.node, the file
# the npm package ships prebuilt, then linked as node_modules/rcluster so
# `require('rcluster')` resolves in Node, Bun and Deno. test-node also
# installs Bun and Deno from npm, so the example is tested under both.
NPM  ?= npm
NODE ?= node
NODE_ADDON    := bindings/node/rcluster.linux-x64-gnu.node
NODE_RUNTIMES := bindings/node/.runtimes/.installed

$(NODE_ADDON): Cargo.toml build.rs $(wildcard src/*.rs src/*/*.rs src/*/*/*.rs) \
		bindings/node/Cargo.toml bindings/node/Cargo.lock bindings/node/package.json \
		$(wildcard bindings/node/src/*.rs)
	cd bindings/node && $(NPM) install --no-audit --no-fund && $(NPM) run build

node: $(NODE_ADDON)
	$(NPM) install --no-save --no-audit --no-fund ./bindings/node

# `npm pack` of bindings/node installed into an empty directory with no
# cargo on PATH serves the Node example (in Node, Bun and Deno).
test-npm-pack: $(NODE_ADDON) $(NODE_RUNTIMES)
	tests/install/npm_pack.sh

$(NODE_RUNTIMES):
	$(NPM) install --prefix bindings/node/.runtimes --no-save --no-audit --no-fund \
		@oven/bun-linux-x64 @deno/linux-x64-glibc
	touch $@

test-node: node $(NODE_RUNTIMES)
	$(NODE) --test bindings/node/test/

# The queue-worker example (examples/queue, see its README): Python and Node
# versions against a real redis-server and MariaDB, which the tests start on
# OS-picked ports in a temporary directory. queue-servers installs the Debian
# packages redis-server and mariadb-server when missing (as root, with
# apt-get); queue-deps the clients: redis and PyMySQL into .venv, ioredis and
# mysql2 into examples/queue/node/node_modules (npm ci, from its lockfile).
QUEUE := examples/queue

queue-servers:
	@command -v redis-server >/dev/null && command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server mariadb-server; } \
		|| { echo "test-queue: redis-server or mariadb-server is missing: apt-get install redis-server mariadb-server" >&2; exit 1; }

$(VENV)/.queue-deps: $(QUEUE)/requirements.txt | python
	$(VENV)/bin/pip install --quiet -r $(QUEUE)/requirements.txt
	touch $@

$(QUEUE)/node/node_modules/.package-lock.json: $(QUEUE)/node/package.json $(QUEUE)/node/package-lock.json
	cd $(QUEUE)/node && $(NPM) ci --no-audit --no-fund

queue-deps: python node $(VENV)/.queue-deps $(QUEUE)/node/node_modules/.package-lock.json

test-queue: queue-servers queue-deps
	$(VENV)/bin/python -m pytest $(QUEUE)/tests -q

# Benchmarks (bench/, see bench/README.md). `make bench`: the full side-by-side
# run, about 17 minutes on 2 CPUs (the queue group is one of them, the
# Python web servers four, the Bun and Deno groups three), writes bench/results/latest.{md,png,json};
# `make bench-quick`: fewer contenders, shorter runs, bench/tmp/quick/. Needs
# wrk (installed with apt-get when missing). Run it on a quiet machine: every
# ratio compares runs of the same moment, but other work widens the spread.
BENCH_TMP    := bench/tmp
BENCH_VENV   := $(BENCH_TMP)/venv
BENCH_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2
# bench/tmp/* find target/release/librcluster.so without LD_LIBRARY_PATH.
BENCH_RPATH  := -Wl,-rpath,'$$ORIGIN/../../$(RELEASE)'
BENCH_BINS   := $(BENCH_TMP)/bench_rcluster $(BENCH_TMP)/prefork $(BENCH_TMP)/ipc_bench $(BENCH_TMP)/openloop

.PHONY: bench bench-quick bench-build bench-tools bench-many-cores

bench: bench-build
	python3 bench/run.py

bench-quick: bench-build
	python3 bench/run.py --quick

# On a machine with 16 or more cores (the C servers only; see the script).
bench-many-cores: bench-tools $(BENCH_TMP)/bench_rcluster $(BENCH_TMP)/prefork
	bench/many_cores.sh bench/results/many-cores
	python3 bench/many_cores_report.py bench/results/many-cores/many_cores.jsonl > bench/results/many-cores/latest.md

# The library and the rcluster command, the Python venv and the Node addon
# (the contenders), Bun and Deno (the bun and deno groups), uvicorn and pm2 (target/cli-deps, the command group's
# baselines), the queue example's servers and clients, the bench's own C
# programs, and the chart's matplotlib.
bench-build: lib python node $(NODE_RUNTIMES) cli-test-deps bench-tools queue-servers queue-deps $(BENCH_BINS) $(BENCH_VENV)/.matplotlib

bench-tools:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y wrk || (apt-get update && apt-get install -y wrk)); } \
		|| { echo "bench: wrk is missing: apt-get install wrk" >&2; exit 1; }

# The two C contenders serve with one HTTP engine (bench/c/http_engine.c);
# they differ only in where connections come from.
BENCH_ENGINE := bench/c/http_engine.c bench/c/http_engine.h

$(BENCH_TMP)/bench_rcluster: bench/c/rcluster_server.c $(BENCH_ENGINE) include/rcluster.h | lib
	@mkdir -p $(BENCH_TMP)
	$(CC) $(BENCH_CFLAGS) bench/c/rcluster_server.c bench/c/http_engine.c $(C_LINK) $(BENCH_RPATH) -o $@

$(BENCH_TMP)/prefork: bench/c/prefork.c $(BENCH_ENGINE)
	@mkdir -p $(BENCH_TMP)
	$(CC) $(BENCH_CFLAGS) bench/c/prefork.c bench/c/http_engine.c -o $@

$(BENCH_TMP)/ipc_bench: bench/c/ipc_bench.c include/rcluster.h | lib
	@mkdir -p $(BENCH_TMP)
	$(CC) $(BENCH_CFLAGS) bench/c/ipc_bench.c $(C_LINK) $(BENCH_RPATH) -o $@

$(BENCH_TMP)/openloop: bench/c/openloop.c
	@mkdir -p $(BENCH_TMP)
	$(CC) $(BENCH_CFLAGS) bench/c/openloop.c -o $@

$(BENCH_VENV)/.matplotlib:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet matplotlib
	touch $@

clean:
	$(CARGO) clean
	rm -rf $(VENV) node_modules bindings/node/target bindings/node/node_modules bindings/node/.runtimes $(NODE_ADDON)
