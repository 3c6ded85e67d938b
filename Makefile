# Two commands on a fresh machine (see README "Quick start"):
#   make demo   - the whole chain on generated data on a local Ray (minutes on 2 CPU cores)
#   make test   - the test suite
# Both create .venv idempotently (re-installed when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# jobs submitted to a local head run `python ...`: make it this venv's, as in an activated venv
export PATH := $(abspath $(BIN)):$(PATH)
export OMP_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_DATA_DISABLE_PROGRESS_BARS := 1

.PHONY: venv ffcv browser demo test test-fast bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch/torchvision first and with pip (not uv): on our machines pip takes them from local files
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# Optional FFCV fast path: needs system libraries (apt, as root) and a C++ build. Best effort:
# when it cannot be installed, its tests are skipped and everything else works.
FFCV_STAMP := $(VENV)/.ffcv-tried
$(FFCV_STAMP): $(STAMP)
	@if ! $(BIN)/python -c "import ffcv" 2>/dev/null; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      libturbojpeg0-dev libopencv-dev pkg-config) >/dev/null 2>&1 || echo "note: apt-get of FFCV libraries failed"; \
	  fi; \
	  $(BIN)/python -m pip install -q -e ".[ffcv]" || echo "note: ffcv not installed; its tests will be skipped"; \
	fi
	touch $@

ffcv: $(FFCV_STAMP)

# Optional browser test of report.html (tests/unit/test_report_browser.py): the system Chromium
# (apt, as root; headless shell, else the full browser) driven by Playwright (the browser extra;
# never `playwright install`, nothing is downloaded outside apt/pip). Best effort, like FFCV:
# when either cannot be installed, that test is skipped with the reason.
BROWSER_STAMP := $(VENV)/.browser-tried
CHROMIUM_BINS := chromium-headless-shell chromium chromium-browser google-chrome
$(BROWSER_STAMP): $(STAMP)
	@if ! for b in $(CHROMIUM_BINS); do command -v $$b; done | grep -q .; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium-headless-shell fonts-dejavu-core || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium fonts-dejavu-core)) >/dev/null 2>&1 \
	      || echo "note: apt-get of Chromium failed; the report browser test will be skipped"; \
	  else \
	    echo "note: no Chromium and no apt-get as root; the report browser test will be skipped"; \
	  fi; \
	fi
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[browser]" \
	  || echo "note: playwright not installed; the report browser test will be skipped"
	touch $@

browser: $(BROWSER_STAMP)

demo: venv
	$(BIN)/python -m jobs.demo

test: venv ffcv browser
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

bench: venv
	$(BIN)/python -m jobs.benchmark step

clean-venv:
	rm -rf $(VENV)
