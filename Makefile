# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS := -q --disable-pip-version-check

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import mm1, torch; assert torch.__version__.startswith('2.13.0')"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mm1 demo recipes/tiny.yaml

test: $(VENV)/.installed
	$(PY) -m pytest
