# Short named targets; `make pr` chains what CI runs.
PYTHON ?= python3.11
VENV := .venv
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
SHARED ?= ../shared
FRUITS ?= $(SHARED)/data/fruits-360
WEIGHTS ?= $(SHARED)/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5

.PHONY: browser setup test unit integration lint locks image pr notebook notebook-strip

setup:  ## venv with the project (both halves + dev tools) and separate ones for the SAM CLI and checkov
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv
	# Bytecode compiled at install (as pip does on EMR): uv does not by default, and with
	# PYTHONDONTWRITEBYTECODE every Spark Python worker recompiled pandas, pyarrow, … (~1-2 s each).
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(VENV)/bin/python -e ".[dev]"
	test -x $(SAM_VENV)/bin/python || $(VENV)/bin/uv venv --quiet --python $(PYTHON) $(SAM_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(SAM_VENV)/bin/python aws-sam-cli==1.170.0
	test -x $(CHECKOV_VENV)/bin/python || $(VENV)/bin/uv venv --quiet --python $(PYTHON) $(CHECKOV_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(CHECKOV_VENV)/bin/python checkov==3.3.30

browser:  ## Debian's Chromium, which the demo report's browser test drives (needs root)
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

test:  ## every test: unit, then integration (real Spark, real images, genuine weights)
	VERGER_SAM=$(SAM_VENV)/bin/sam VERGER_CHECKOV=$(CHECKOV_VENV)/bin/checkov VERGER_FRUITS=$(FRUITS) VERGER_WEIGHTS=$(WEIGHTS) $(VENV)/bin/pytest

unit:
	VERGER_SAM=$(SAM_VENV)/bin/sam VERGER_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(VENV)/bin/pytest tests/unit

integration:
	VERGER_FRUITS=$(FRUITS) VERGER_WEIGHTS=$(WEIGHTS) $(VENV)/bin/pytest tests/integration

lint:  ## the template (SAM's linter, checkov's security checks), and the dependency locks against pyproject.toml
	AWS_DEFAULT_REGION=eu-west-3 SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam validate --lint
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --compact --quiet
	$(VENV)/bin/python -m bootstrap.locks --check

locks:  ## regenerate bootstrap/requirements-*.txt after editing pyproject.toml
	PATH=$(VENV)/bin:$$PATH $(VENV)/bin/python -m bootstrap.locks

image:  ## build and push the EMR Serverless job image (needs Docker): make image IMAGE_REPOSITORY=<output ImageRepositoryUri>
	$(VENV)/bin/python -m bootstrap.image --repository-uri "$(IMAGE_REPOSITORY)" --weights $(WEIGHTS)

WAREHOUSE ?= warehouse-demo
IMAGES ?= $(FRUITS)
notebook:  ## open notebooks/explore.ipynb on WAREHOUSE (a folder, default the demo's, or s3://BUCKET/warehouse)
	case "$(WAREHOUSE)" in \
		s3://*) warehouse="$(WAREHOUSE)"; images="";; \
		*) warehouse="$$(realpath -m "$(WAREHOUSE)")"; images="$$(realpath -m "$(IMAGES)")";; \
	esac; VERGER_WAREHOUSE="$$warehouse" VERGER_IMAGES="$$images" $(VENV)/bin/jupyter lab notebooks/explore.ipynb

notebook-strip:  ## remove outputs before committing the notebook (a unit test checks it)
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/explore.ipynb

pr: lint test
