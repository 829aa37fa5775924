# The two commands of the README. Each creates .venv if needed and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean lock check-lock

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,hub]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/publisher demo $(if $(ON),--on $(ON))

# ruff's lint and its formatter (`ruff format .` fixes what --check finds); part of `make test`.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest-xdist: one worker per CPU (at most 4; each imports torch and builds its own session
# fixtures), about half the wall time on 2 cores. `pytest tests/x.py` alone stays serial.
test: lint
	$(PY) -m pytest -q -n auto --maxprocesses=4

# The push job's hash-pinned dependencies (publish.yml installs them with --require-hashes):
# resolved from PyPI alone (no local wheel directories or constraints), with every file's hash.
LOCK_IN := requirements/publish.in
LOCK := requirements/publish.lock
LOCK_VENV := build/lock-venv

lock:
	test -x $(LOCK_VENV)/bin/pip-compile || ( $(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/pip install --quiet pip-tools==7.6.2 )
	env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
		$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --index-url https://pypi.org/simple --output-file $(LOCK) $(LOCK_IN)

# The lock agrees with pyproject.toml and a push needs nothing else (also part of `make test`).
check-lock: $(STAMP)
	$(PY) -m pytest -q tests/test_lock.py

bench: $(STAMP)
	$(PY) bench/merge_overhead.py
	$(PY) bench/merge_scaling.py
	$(PY) bench/verify_cost.py
	flock /tmp/publisher-heavy.lock $(PY) bench/merge_targets.py

clean:
	rm -rf build runs
