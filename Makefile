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

.PHONY: all lib header examples demo test test-rust test-c python test-python node test-node bench bench-quick clean

all: lib examples

lib:
	$(CARGO) build --release

# build.rs regenerates include/rcluster.h on every build of the crate.
header:
	$(CARGO) build

$(LIB): lib

examples: lib
	$(CARGO) build --release --examples
	$(CC) $(CFLAGS) examples/c/hello_server.c $(C_LINK) -Wl,-rpath,'$$ORIGIN/..' -o $(RELEASE)/examples/hello_server_c

demo: examples
	$(RELEASE)/examples/hello_server_c --port 8080

test: test-rust test-c test-python test-node

test-rust:
	$(CARGO) test --all-targets

test-c: lib
	$(CC) $(CFLAGS) tests/c/raw_fork.c $(C_LINK) -Wl,-rpath,'$$ORIGIN' -o $(RELEASE)/raw_fork_test
	timeout 60 $(RELEASE)/raw_fork_test

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
	$(VENV)/bin/pip install --quiet ./bindings/python pytest $(PY_SERVERS)
	touch $@

python: $(VENV)/.rcluster-installed

test-python: python
	$(VENV)/bin/python -m pytest bindings/python/tests -q

# Node: the napi-rs addon, built with plain cargo (its own target dir; no
# node-gyp, no header download) by the package's own `npm install` (npm 11
# blocks dependencies' install scripts), then linked as node_modules/rcluster
# so `require('rcluster')` resolves in Node, Bun and Deno. test-node also
# installs Bun and Deno from npm, so the example is tested under both.
NPM  ?= npm
NODE ?= node
NODE_ADDON    := bindings/node/rcluster.node
NODE_RUNTIMES := bindings/node/.runtimes/.installed

$(NODE_ADDON): Cargo.toml build.rs $(wildcard src/*.rs src/*/*.rs src/*/*/*.rs) \
		bindings/node/Cargo.toml bindings/node/Cargo.lock bindings/node/build.js \
		$(wildcard bindings/node/src/*.rs)
	cd bindings/node && $(NPM) install --no-audit --no-fund

node: $(NODE_ADDON)
	$(NPM) install --no-save --no-audit --no-fund ./bindings/node

$(NODE_RUNTIMES):
	$(NPM) install --prefix bindings/node/.runtimes --no-save --no-audit --no-fund \
		@oven/bun-linux-x64 @deno/linux-x64-glibc
	touch $@

test-node: node $(NODE_RUNTIMES)
	$(NODE) --test bindings/node/test/

# Benchmarks (bench/, see bench/README.md). `make bench`: the full side-by-side
# run, about 13 minutes on 2 CPUs (4 of them the Python web servers), writes bench/results/latest.{md,png,json};
# `make bench-quick`: fewer contenders, shorter runs, bench/tmp/quick/. Needs
# wrk (installed with apt-get when missing). Run it on a quiet machine: every
# ratio compares runs of the same moment, but other work widens the spread.
BENCH_TMP    := bench/tmp
BENCH_VENV   := $(BENCH_TMP)/venv
BENCH_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2
# bench/tmp/* find target/release/librcluster.so without LD_LIBRARY_PATH.
BENCH_RPATH  := -Wl,-rpath,'$$ORIGIN/../../$(RELEASE)'
BENCH_BINS   := $(BENCH_TMP)/bench_rcluster $(BENCH_TMP)/prefork $(BENCH_TMP)/ipc_bench $(BENCH_TMP)/openloop

.PHONY: bench bench-quick bench-build bench-tools

bench: bench-build
	python3 bench/run.py

bench-quick: bench-build
	python3 bench/run.py --quick

# The library, the Python venv and the Node addon (the contenders), the
# bench's own C programs, and the chart's matplotlib.
bench-build: lib python node bench-tools $(BENCH_BINS) $(BENCH_VENV)/.matplotlib

bench-tools:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y wrk || (apt-get update && apt-get install -y wrk)); } \
		|| { echo "bench: wrk is missing: apt-get install wrk" >&2; exit 1; }

$(BENCH_TMP)/bench_rcluster: bench/c/bench_server.c examples/c/hello_server.c include/rcluster.h | lib
	@mkdir -p $(BENCH_TMP)
	$(CC) $(BENCH_CFLAGS) -DBENCH_RCLUSTER bench/c/bench_server.c $(C_LINK) $(BENCH_RPATH) -o $@

$(BENCH_TMP)/prefork: bench/c/bench_server.c examples/c/hello_server.c include/rcluster.h
	@mkdir -p $(BENCH_TMP)
	$(CC) $(BENCH_CFLAGS) -DBENCH_PREFORK bench/c/bench_server.c -Iinclude -o $@

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
