# Two entry points (see README): `make demo` runs the daemon on the example agent, `make test` runs the suite.
# Both create .venv and install the real claude CLI into .tools/claude/ themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLAUDE := .tools/claude/node_modules/.bin/claude

.PHONY: demo test venv claude bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

claude: $(CLAUDE)
$(CLAUDE): scripts/install-claude.sh
	bash scripts/install-claude.sh

demo: venv claude
	bash scripts/demo.sh

test: venv claude
	$(VENV)/bin/pytest -q

bench: venv claude
	$(VENV)/bin/pip install --quiet -r bench/requirements.txt
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .tools examples/agent/state examples/agent/logs
