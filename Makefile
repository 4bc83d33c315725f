# `make test` is the test command, `make demo` the demo; both build .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Extra pip arguments, e.g. PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu' for CPU-only torch.
PIP_ARGS ?=

# Every test run installs these exact versions (the test extra, which takes in the tools extra, resolved for Linux
# x86_64, Python 3.11); `make lock` resolves pyproject.toml's ranges anew, to the newest versions that fit.
LOCK := requirements/test.lock

.PHONY: venv test demo lint lock

venv: $(STAMP)

# Reinstall only when the dependency list changed; the editable install picks up code changes by itself.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_ARGS) -r $(LOCK)
	$(VENV)/bin/python -m pip install $(PIP_ARGS) --no-deps -e .
	touch $(STAMP)

lock:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --upgrade --custom-compile-command "make lock" -o $(LOCK)

# ruff on everything, mypy (strict) on the runtime packages, proxy/ and rerank/.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: for a test target that is a failure, not a pass.
test: venv
	@status=0; $(VENV)/bin/python -m pytest -q || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

demo: venv
	$(VENV)/bin/rerank-proxy demo
