# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lowbit-installed
# local GLUE copy beside the checkout, if present (else data.local_dir / the hub)
SHARED_GLUE := $(abspath ../shared/data/glue)
export LOWBIT_DATA_DIR ?= $(if $(wildcard $(SHARED_GLUE)),$(SHARED_GLUE),)
export HF_HUB_OFFLINE ?= $(if $(LOWBIT_DATA_DIR),1,0)
export WANDB_SILENT := true

.PHONY: install demo test test-fast test-deps bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the local CPU wheel first, so nothing pulls CUDA wheels
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,bench,postgres,deploy]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) train.py +experiment=demo_sst2

# PostgreSQL server for tests/test_sweep_postgres.py and Debian's chromium for the dashboard's browser tests
# (tests/report, driven by Playwright): apt-get installed when missing and possible (root + apt);
# otherwise those tests are skipped and pytest -ra prints why
test-deps:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing postgresql (apt-get) for tests/test_sweep_postgres.py"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	    || echo "could not install postgresql: tests/test_sweep_postgres.py will be skipped"; \
	else echo "no PostgreSQL (initdb) and cannot apt-get it (not root or no apt): tests/test_sweep_postgres.py will be skipped"; fi
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (apt-get) for the dashboard's browser tests (tests/report)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium: the browser tests in tests/report will be skipped"; \
	else echo "no /usr/bin/chromium and cannot apt-get it (not root or no apt): the browser tests in tests/report will be skipped"; fi

# pytest-xdist workers, one thread each (tests/conftest.py); a test file stays on one worker (--dist loadfile), so
# its module fixtures are built once. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP) test-deps
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(PY) -m lowbit.bench qat_step

clean:
	rm -rf logs .cache outputs multirun
