# The two commands: `make dev` runs the local stack, `make test` runs every test.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# torch for the venv: PyTorch's CPU-only wheels (about 200 MB, not several GB of CUDA), unless
# this machine has an NVIDIA GPU (nvidia-smi) or its pip configuration constrains torch to a
# build it serves itself (the offline CI machine: /etc/xdg/pip). Override with TORCH_PIN=...
TORCH_VERSIONS := torch==2.14.1 torchvision==0.29.1
CPU_TORCH_INDEX := --index-url https://download.pytorch.org/whl/cpu
PIP_CONSTRAINT_FILES = $(shell python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*constraint='\(.*\)'$$/\1/p")
TORCH_FROM_MACHINE = $(shell command -v nvidia-smi 2>/dev/null; grep -ls '^torch' $(PIP_CONSTRAINT_FILES) /dev/null)
TORCH_PIN ?= $(TORCH_VERSIONS) $(if $(strip $(TORCH_FROM_MACHINE)),,$(CPU_TORCH_INDEX))
# checkov has a virtualenv of its own: it installs an `hcl2` module that clashes with python-hcl2's.
CHECKOV_VENV ?= .local/checkov-venv
CHECKOV_VERSION ?= 3.3.30

.PHONY: dev test test-fast lint bench load venv clean bundles checkov-venv smoke

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@

checkov-venv: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

# One deployable source directory and zip per function, in build/functions (see docs/deploy.md).
# MODEL_STORE=gs://BUCKET (or a directory) puts a verified snapshot of its default model into
# classify's; a gs:// store needs the venv's Python (the Google Cloud Storage client).
# TFVARS=FILE: the Terraform settings to deploy, whose dedicated models get bundles of their own.
bundles:
	$(if $(wildcard $(PYTHON)),$(PYTHON),python3) scripts/build_bundles.py $(if $(MODEL_STORE),--store $(MODEL_STORE)) $(if $(TFVARS),--terraform-vars $(TFVARS))

dev: venv
	$(PYTHON) -m devstack.run

# ruff, then the package's import rules (import-linter: [tool.importlinter] in pyproject.toml)
lint: venv
	$(PYTHON) -m ruff check imgclassify devstack functions bench tests scripts
	$(VENV)/bin/lint-imports

test: lint checkov-venv
	$(PYTHON) -m pytest -q

# The unit tier alone: no emulator, no server, no torch export (under a minute).
test-fast: venv
	$(PYTHON) -m pytest -q tests/unit

# The post-deploy smoke check (scripts/smoke.py, standard library only), e.g.
#   make smoke URL=https://GATEWAY_HOST KEY=... [ORIGIN=https://storage.googleapis.com] [REFERRER=https://storage.googleapis.com/]
# (REFERRER: what the page sends as Referer, needed when the key is restricted to it, as by default)
# Against `LOCAL_API_KEY=K make dev`: make smoke URL=http://127.0.0.1:8080 KEY=K ORIGIN=http://127.0.0.1:8080
# (without LOCAL_API_KEY the local router checks no key: leave KEY out).
smoke:
	@test -n "$(URL)" || { echo "usage: make smoke URL=https://GATEWAY_HOST KEY=API_KEY [ORIGIN=...]"; exit 2; }
	python3 scripts/smoke.py $(URL) $(if $(KEY),--key $(KEY)) $(if $(ORIGIN),--origin $(ORIGIN)) $(if $(REFERRER),--referrer $(REFERRER))

bench: venv
	$(PYTHON) bench/serving.py

load: venv
	$(PYTHON) bench/load.py

clean:
	rm -rf .local test-artifacts
