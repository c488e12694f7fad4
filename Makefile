# The README's two commands are `make run` and `make test`; each builds what it needs the first time.
SHELL := /bin/bash
.DEFAULT_GOAL := help

AIRFLOW_VERSION ?= 3.3.1
SHARED ?= ../shared
VENV := .venv
PYTHON312 := $(shell scripts/find-python312 2>/dev/null)

AIRFLOW_VENV := $(VENV)/airflow-$(AIRFLOW_VERSION)
AIRFLOW_PY := $(AIRFLOW_VENV)/bin/python
DAP_PY := $(VENV)/dap/bin/python
TOOLS_BIN := $(VENV)/tools/bin

# The operators start each table's child process on this interpreter (MWAA: set by startup.sh).
export CD2_DAP_PYTHON := $(abspath $(DAP_PY))
export CD2_TOOLS_BIN := $(abspath $(TOOLS_BIN))

# The tests CI also runs on a second PostgreSQL major (test-postgres): DAG level, faults, version warning,
# the fast init's equivalence with the client's loader (its casts are the server's).
# Not those whose promise is Airflow's side (parsing, scheduling, the UI, assets, several instances) or
# the other tools' builders (moving in): they touch the target database as the DAG-level runs do.
POSTGRES_TESTS ?= tests/dags tests/local_dap/emulator/test_faults.py tests/local_dap/test_postgres.py \
	tests/plugins/cd2/dap_child/test_server_version.py tests/plugins/cd2/dap_child/test_fault_matrix.py \
	tests/plugins/cd2/dap_child/test_fast_load.py
POSTGRES_IGNORES := $(foreach t,integrity operator_view assets_downstream real_scheduler instances adopt,\
	--ignore=tests/dags/test_$(t).py)

.PHONY: help run test lint test-airflow-3.2.1 test-postgres venvs lock bundle deploy clean check-python check-postgres \
	status-screenshot

help:
	@echo "make run                 run the cd2_replica DAG locally (throwaway PostgreSQL + DAP emulator)"
	@echo "make test                the whole test suite, lint included (Airflow $(AIRFLOW_VERSION))"
	@echo "make test-airflow-3.2.1  the DAG-level tests on MWAA's Airflow 3.2.1 environment"
	@echo "CD2_PG_BINDIR=DIR make test-postgres  the DAG-level and fault tests on the server binaries in DIR"
	@echo "make lock                regenerate locks/ from $(SHARED)/mwaa and PyPI"
	@echo "make bundle              write dist/ for MWAA"
	@echo "make status-screenshot   docs/status-page.png: the status page on a local deployment (needs chromium)"
	@echo "make deploy DEPLOY_ARGS=...  bundle, upload, deploy on AWS (docs/deploy.md)"

run: venvs check-postgres
	$(AIRFLOW_PY) scripts/run_local.py

# Two workers, each taking whole test files (their module fixtures are emulators, servers and Airflow
# deployments), in collection order (not xdist's most-tests-first), slowest files first (tests/conftest.py).
TEST_WORKERS ?= 2

test: venvs check-postgres lint
	$(AIRFLOW_PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(VENV)/tools/.installed
	$(TOOLS_BIN)/ruff check .
	$(TOOLS_BIN)/ruff format --check .

# The shape lifecycle and log history tests prove the child's work on the database, which the Airflow
# version does not change; they run in `make test` and on the second PostgreSQL major, not here.
# Moving in (test_adopt) is the other tools' builders and the child's work, not the Airflow version's.
AIRFLOW_ONLY_IGNORES := --ignore=tests/dags/test_lifecycle.py --ignore=tests/dags/test_log_history.py \
	--ignore=tests/dags/test_adopt.py

test-airflow-3.2.1:
	$(MAKE) AIRFLOW_VERSION=3.2.1 venvs check-postgres
	$(VENV)/airflow-3.2.1/bin/python -m pytest $(AIRFLOW_ONLY_IGNORES) tests/dags

test-postgres: venvs check-postgres
	$(AIRFLOW_PY) -m pytest -v $(POSTGRES_IGNORES) $(POSTGRES_TESTS)

venvs: $(AIRFLOW_VENV)/.installed $(VENV)/dap/.installed $(VENV)/tools/.installed

check-python:
	@test -n "$(PYTHON312)" || { scripts/find-python312; exit 1; }

# The PostgreSQL the tests and `make run` start: the tools venv's server wheel unless CD2_POSTGRES=system
# or CD2_PG_BINDIR says otherwise (local_dap/postgres.py); CD2_TEST_DATABASE_URL names a server instead.
check-postgres: $(AIRFLOW_VENV)/.installed $(VENV)/tools/.installed
	@$(AIRFLOW_PY) -c "from local_dap.postgres import describe_choice; print('PostgreSQL:', describe_choice())"

# The Airflow environment: MWAA's image package set from its lock, installed without resolution.
# psycopg2 is left out locally: it is the image's source build of the module psycopg2-binary also
# provides, and building it needs libpq headers and a compiler.
$(VENV)/airflow-%/.installed: locks/airflow-%.txt requirements/test.txt | check-python
	rm -rf $(VENV)/airflow-$*
	$(PYTHON312) -m venv $(VENV)/airflow-$*
	grep -v '^psycopg2==' locks/airflow-$*.txt > $(VENV)/airflow-$*/lock.txt
	$(VENV)/airflow-$*/bin/python -m pip install --quiet --no-deps -r $(VENV)/airflow-$*/lock.txt
	$(VENV)/airflow-$*/bin/python -m pip install --quiet -c $(VENV)/airflow-$*/lock.txt -r requirements/test.txt
	$(VENV)/airflow-$*/bin/python -m pip check
	touch $@

# The DAP environment: only the dap client and its closure, hash-checked.
$(VENV)/dap/.installed: locks/dap.txt | check-python
	rm -rf $(VENV)/dap
	$(PYTHON312) -m venv $(VENV)/dap
	$(DAP_PY) -m pip install --quiet --require-hashes --no-deps -r locks/dap.txt
	$(DAP_PY) -m pip check
	touch $@

# Test-only tools whose own pins would move runtime ones: a third environment.
$(VENV)/tools/.installed: locks/tools.txt | check-python
	rm -rf $(VENV)/tools
	$(PYTHON312) -m venv $(VENV)/tools
	$(TOOLS_BIN)/python -m pip install --quiet --no-deps -r locks/tools.txt
	touch $@

lock: check-python
	$(PYTHON312) scripts/lock.py airflow --version 3.3.1 \
		--constraints $(SHARED)/mwaa/constraints-3.3.1-3.12.txt \
		--essential $(SHARED)/mwaa/mwaa-essential-constraints-3.3.1.txt
	$(PYTHON312) scripts/lock.py airflow --version 3.2.1 \
		--constraints $(SHARED)/mwaa/constraints-3.2.1-3.12.txt \
		--essential $(SHARED)/mwaa/mwaa-essential-constraints-3.2.1.txt
	$(PYTHON312) scripts/lock.py dap

# Installs no browser: says how to get Chromium when it is missing.
status-screenshot: venvs check-postgres
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
		|| { echo "Chromium is needed: sudo apt-get install -y chromium (Debian/Ubuntu), or put it on PATH"; exit 2; }
	$(AIRFLOW_PY) scripts/screenshot_status_page.py --out docs/status-page.png

bundle: $(AIRFLOW_VENV)/.installed
	$(AIRFLOW_PY) -m mwaa_infra.bundle --out dist --airflow-version $(AIRFLOW_VERSION)

# DEPLOY_ARGS: --create-network | --vpc-id vpc-... --subnet-ids subnet-a,subnet-b; plus --parameter Key=Value ...
deploy: bundle
	$(AIRFLOW_PY) -m mwaa_infra.deploy deploy --skip-bundle --parameter AirflowVersion=$(AIRFLOW_VERSION) $(DEPLOY_ARGS)

clean:
	rm -rf $(VENV) dist build
