# --- Python binding (merge into the top-level Makefile) -----------------------
# `make python` creates .venv with the rcluster package (pip builds the Rust
# library through maturin and bundles it: no LD_LIBRARY_PATH) plus pytest.
# `make test-python` runs the binding's tests; add it to `test:`.
#
#   test: test-rust test-c test-python
#   .PHONY: python test-python

PYTHON ?= python3
VENV   := .venv

# Rebuilt when the crate or the Python package changes.
$(VENV)/.rcluster-installed: Cargo.toml $(wildcard src/*.rs src/*/*.rs src/*/*/*.rs) \
		bindings/python/pyproject.toml $(wildcard bindings/python/python/rcluster/*)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# pip always rebuilds and reinstalls a local directory, so this also updates.
	$(VENV)/bin/pip install --quiet ./bindings/python pytest
	touch $@

python: $(VENV)/.rcluster-installed

test-python: python
	$(VENV)/bin/python -m pytest bindings/python/tests -q
