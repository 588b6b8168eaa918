# Two entry points (see README): `make example` and `make test`.
# Both create .venv on first use; torch is pinned through constraints.txt so pip never
# resolves a multi-GB CUDA build on a CPU-only machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: venv example test test-fast benchmark clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt "torch==2.13.0"
	$(PIP) install -c constraints.txt -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

example: $(STAMP)
	rm -rf out/example
	$(BIN)/ddasr ddasr_nipype/resources/example out/example participant -w out/work --nprocs 2
	@echo "Super-resolved outputs: out/example/ddasr (report: out/example/ddasr/sub-*.html)"

test: $(STAMP)
	$(BIN)/pytest -ra tests

clean:
	rm -rf out build *.egg-info
