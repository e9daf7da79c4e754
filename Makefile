# The two commands: `make dev` runs the local stack, `make test` runs every test.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# This machine's pip serves these from local disk; elsewhere any recent torch works,
# e.g. make dev TORCH_PIN="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: dev test lint bench load venv clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

dev: venv
	$(PYTHON) -m devstack.run

lint: venv
	$(PYTHON) -m ruff check imgclassify devstack functions bench tests

test: lint
	$(PYTHON) -m pytest -q

bench: venv
	$(PYTHON) bench/serving.py

load: venv
	$(PYTHON) bench/load.py

clean:
	rm -rf .local test-artifacts
