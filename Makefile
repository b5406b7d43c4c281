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

.PHONY: all lib header examples demo test test-rust test-c python test-python node test-node clean

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

clean:
	$(CARGO) clean
	rm -rf $(VENV) node_modules bindings/node/target bindings/node/node_modules bindings/node/.runtimes $(NODE_ADDON)
