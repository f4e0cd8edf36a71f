# The two set-up commands of the README. Both create .venv when it is missing and install
# the project with the pinned versions of requirements.lock (torch/torchvision come from
# this machine's local wheel store; pip, not uv, finds them there).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck install clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mritumor demo --outdir runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# mypy over src/ with the settings in pyproject.toml ([tool.mypy]): about 30 s from a cold
# cache on two cores (20 s of CPU, 0.9 GB), under a second once .mypy_cache is warm.
typecheck: $(STAMP)
	$(BIN)/mypy

# The report's render test and the serve page's browser test need headless Chromium (and its
# driver): the Debian packages are installed when missing (as root, or with password-less
# sudo); if that cannot be done those tests skip.
test: lint typecheck
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing chromium + chromium-driver (Debian packages) for the browser tests"; \
	  { { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	    { sudo -n apt-get update -qq && \
	      sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }; \
	  } >/dev/null 2>&1 || echo "chromium not installed: the browser tests will skip"; }
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
