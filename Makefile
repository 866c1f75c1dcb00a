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
	touch $(STAMP)

install: $(STAMP)

# Until the miniature HAWAII demo lands: the tiny two-teacher MoLA recipe, end to end on CPU,
# into a new run directory each time.
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) -m kdkit.engine.tiny runs/demo-data
	$(VENV)/bin/kdkit run recipes/tiny/timm_two_teachers.yaml --data-root runs/demo-data --output-dir $(DEMO_RUN)

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
