# `make test` is the test command, `make demo` the demo; both build .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Extra pip arguments, e.g. PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu' for CPU-only torch.
PIP_ARGS ?=

.PHONY: venv test demo

venv: $(STAMP)

# Reinstall only when the dependency list changed; the editable install picks up code changes by itself.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_ARGS) -e '.[test]'
	touch $(STAMP)

# pytest exits 5 when it collected nothing: for a test target that is a failure, not a pass.
test: venv
	@status=0; $(VENV)/bin/python -m pytest -q || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

demo: venv
	$(VENV)/bin/rerank-proxy demo
