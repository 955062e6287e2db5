# Two commands for a new machine (see README): `make demo` and `make test`.
# Everything lives in .venv inside the checkout; VENV=... points elsewhere.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(VENV)/bin/facereenact demo --out demo-out

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	for f in tests/benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
