# `make repro` and `make test` create the virtual environment once (.venv) and reuse it afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test test-fast lint env screenshots

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first, pinned: these wheels are the ones served from the machine's local store
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

lint: $(STAMP)
	ruff check pipeline stages tests benchmarks docs

# The README's screenshots of the report, the DVC plots and the review page, from the built project
# (headless Chromium).
screenshots: $(STAMP)
	python docs/screenshots.py
	python benchmarks/review_page.py --screenshot docs/review.png

# Two workers, one test file each and one thread each, taking the files in tests/conftest.py's FILE_ORDER
# (longest first; xdist's default would order them by their number of tests): the end-to-end files spend much
# of their time starting processes, which overlaps well on 2 cores; module fixtures stay in one worker, and the
# tiny project is built once per session for both (`tiny_build`). The 15 slowest tests are listed at the end:
# where the 12-minute budget goes.
test: $(STAMP) lint
	pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# Unit tests only: everything not marked `e2e` (the tests that drive the real dvc/mlpl CLI in a temporary
# project or train for long), in under 2 min on 2 cores.
test-fast: $(STAMP) lint
	pytest -q -n 2 -m "not e2e"
