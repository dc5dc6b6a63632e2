# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned here (the CPU build on this disk); the package itself only asks for torch>=2.4
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base-installed: pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[train,serve]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.base-installed
	$(PIP) install -q -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.base-installed
	$(VENV)/bin/prefkit demo --workdir demo-out

test: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests bench

bench-quick: $(VENV)/.dev-installed
	$(PY) bench/io_read_validate.py --quick --json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
