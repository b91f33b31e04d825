# `make test` and `make demo` each do their own set-up (Debian packages, .venv).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo clean

setup:
	./scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check waltd tests bench lab
	$(VENV)/bin/ruff format --check waltd tests bench lab

test: setup
	$(VENV)/bin/ruff check waltd tests bench lab
	CI=$${CI-} $(PY) -m pytest -q -ra

demo: setup
	$(PY) -m lab.demo

clean:
	rm -rf $(VENV) .pytest_cache .cache build *.egg-info
