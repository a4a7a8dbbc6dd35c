# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test peers demo bench clean check-python

run: $(VENV)/.installed
	$(BIN)/gateway serve

test: $(VENV)/.installed-test peers
	$(BIN)/pytest $(PYTEST_ARGS)

demo: $(VENV)/.installed-test
	$(BIN)/gateway demo

peers:
	bash scripts/install-peers.sh

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "make: Python 3.11 or newer is needed (PYTHON=$(PYTHON) is older); run e.g. make PYTHON=python3.11"; exit 1; }

$(VENV)/.created: | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.created pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
