# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs on first use (again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-all docs reference clean

# constraints.txt pins the exact tested versions (torch and torchvision as one pair), so .venv is the
# same on every machine; pyproject.toml keeps the ranges a user's environment may choose from.
PIP_INSTALL := $(PY) -m pip install --quiet -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e ".[test,docs,digits,wandb,mlflow]"
	# lmms-eval for the integration test, without the pins of its full extra (`pip install "kdkit[lmms]"`)
	$(PIP_INSTALL) --no-deps "lmms-eval>=0.7,<0.8"
	$(PIP_INSTALL) accelerate datasets evaluate loguru sacrebleu pytz tenacity pytablewriter "filelock>=3.16,<4"
	touch $(STAMP)

install: $(STAMP)

# The miniature HAWAII reproduction (synthetic world, three expert teachers, four ablation rows, report):
# 9 min 6 s on two idle CPU cores (measured on a fresh clone; 18 min on a shared, loaded machine);
# rerunning reuses what is done. The report's path is printed last.
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m experiments.mini_hawaii $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(PYTEST_WORKERS)

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS)

docs: $(STAMP)
	$(PY) -m kdkit.schema_export docs/reference/recipe.md --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

reference: $(STAMP)
	$(PY) -m kdkit.schema_export docs/reference/recipe.md

clean:
	rm -rf $(VENV) site
