# ---- Node binding (bindings/node) -----------------------------------------
# Proposed for the top-level Makefile: add `node` and `test-node` to .PHONY
# and `test-node` to `test`.
#
# `make node` builds the napi-rs addon with plain cargo (its own workspace and
# target dir, no node-gyp, no header download) through the package's install
# script, then links node_modules/rcluster -> bindings/node so the examples'
# `require('rcluster')` resolves in Node, Bun and Deno. npm >= 11 blocks
# dependencies' install scripts by default, which is why the build runs as
# the package's own `npm install` and the link step needs no script.
# `make test-node` also installs Bun and Deno from npm (into
# bindings/node/.runtimes) so the example is tested under both; if npm cannot
# fetch them, those two tests are skipped with a message saying so.

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
	-$(NPM) install --prefix bindings/node/.runtimes --no-save --no-audit --no-fund \
		@oven/bun-linux-x64 @deno/linux-x64-glibc && touch $@

test-node: node $(NODE_RUNTIMES)
	$(NODE) --test bindings/node/test/
