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

.PHONY: all lib header examples demo test test-rust test-tools test-c python test-python node test-node test-queue queue-deps queue-servers bench bench-quick clean cli-test-deps

all: lib examples

# The library and the `rcluster` command (target/release/rcluster;
# `cargo install --path . --bin rcluster` installs it).
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

test: test-rust test-c test-python test-node test-queue

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

# The real servers the Rust tests drive: systemd-socket-activate (Debian's
# systemd package) stands in for systemd in tests/systemd.rs.
test-tools:
	@command -v systemd-socket-activate >/dev/null || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y --no-install-recommends systemd || (apt-get update && apt-get install -y --no-install-recommends systemd)); } \
		|| { echo "test: systemd-socket-activate is missing: apt-get install systemd" >&2; exit 1; }

test-c: lib
	$(CC) $(CFLAGS) tests/c/raw_fork.c $(C_LINK) -Wl,-rpath,'$$ORIGIN' -o $(RELEASE)/raw_fork_test
	timeout 60 $(RELEASE)/raw_fork_test

# Python: .venv with the rcluster package (pip builds the Rust library through
# maturin and bundles it: no LD_LIBRARY_PATH) plus pytest.
PYTHON ?= python3
VENV   := .venv

$(VENV)/.rcluster-installed: Cargo.toml build.rs $(wildcard src/*.rs src/*/*.rs src/*/*/*.rs) \
		bindings/python/pyproject.toml $(wildcard bindings/python/python/rcluster/*)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet ./bindings/python pytest
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
# run, about 10 minutes on 2 CPUs (the queue group is one of them), writes
# bench/results/latest.{md,png,json}; `make bench-quick`: fewer contenders,
# shorter runs, bench/tmp/quick/. Needs
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
# (the contenders), uvicorn and pm2 (target/cli-deps, the command group's
# baselines), the queue example's servers and clients, the bench's own C
# programs, and the chart's matplotlib.
bench-build: lib python node cli-test-deps bench-tools queue-servers queue-deps $(BENCH_BINS) $(BENCH_VENV)/.matplotlib

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
