# The two commands the README opens with. Each sets itself up (virtualenv, install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Simulated API unless a key is set.
SIMULATE := $(if $(WAVESPEED_API_KEY),,--simulate)

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/editpipe run examples/quickstart/manifest.yaml $(SIMULATE)

test: $(BIN)/.installed
	$(BIN)/pytest -q -n 3 --dist loadfile

clean:
	rm -rf $(VENV) examples/quickstart/out test-artifacts
