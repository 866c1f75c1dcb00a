# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs on first use (again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-all docs reference clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,docs]"
	# lmms-eval for the integration test, without the pins of its full extra (`pip install "kdkit[lmms]"`)
	$(PY) -m pip install --quiet --no-deps "lmms-eval>=0.7,<0.8"
	$(PY) -m pip install --quiet accelerate datasets evaluate loguru sacrebleu pytz tenacity pytablewriter "filelock>=3.16,<4"
	touch $(STAMP)

install: $(STAMP)

# The miniature HAWAII reproduction (synthetic world, three expert teachers, four ablation rows, report):
# about ten minutes on two CPU cores; rerunning reuses what is done. The report's path is printed last.
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
