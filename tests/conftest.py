"""Fixtures shared by the whole suite: a PostgreSQL server and per-test databases."""

from __future__ import annotations

import os
import re
from collections import Counter

import pytest

from local_dap.control import EmulatorProcess, start_emulator
from local_dap.postgres import PostgresServer, describe_choice, server_for_tests
from tests.support.moto_server import moto_server

POSTGRES_VERSION = pytest.StashKey[str]()
POSTGRES_PROPERTY = "postgresql"


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """One PostgreSQL server for the session (throwaway, or ``CD2_TEST_DATABASE_URL``)."""
    with server_for_tests() as server:
        request.config.stash[POSTGRES_VERSION] = server.server_version
        yield server


# The slowest files (minutes each, `make test PYTEST_ADDOPTS=--durations=40`), collected first so that on
# two workers taking whole files (the Makefile) neither is left with a long one at the end.
SLOW_FIRST = (
    "tests/dags/test_lifecycle.py",
    "tests/dags/test_cd2_replica.py",
    "tests/dags/test_log_history.py",
    "tests/plugins/cd2/dap_child/test_fault_matrix.py",
    "tests/dags/test_operator_view.py",
    "tests/dags/test_adopt.py",
    "tests/dags/test_failure_notifications.py",
    "tests/dags/test_assets_downstream.py",
    "tests/dags/test_real_scheduler.py",
    "tests/dags/test_instances.py",
    "tests/scripts/test_lock.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: index for index, path in enumerate(SLOW_FIRST)}
    root = config.rootpath
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"postgresql: {describe_choice()}"
    except RuntimeError as error:
        return f"postgresql: none: {error}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Each database test's report names the server version it ran on (JUnit XML shows it too)."""
    report = yield
    version = item.config.stash.get(POSTGRES_VERSION, None)
    if version and "postgres_server" in getattr(item, "fixturenames", ()) and report.when == "call":
        report.user_properties.append((POSTGRES_PROPERTY, version))
    return report


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Which PostgreSQL version the database tests ran on: counts, and each test under CI or ``-v``."""
    ran = [
        (report.nodeid, report.outcome, dict(report.user_properties)[POSTGRES_PROPERTY])
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call" and POSTGRES_PROPERTY in dict(report.user_properties)
    ]
    if not ran:
        return
    terminalreporter.section("PostgreSQL versions of the database tests")
    if os.environ.get("CI") or config.get_verbosity() > 0:
        for nodeid, outcome, version in sorted(ran):
            terminalreporter.write_line(f"PostgreSQL {version} {outcome} {nodeid}")
    for version, outcomes in sorted(_by_version(ran).items()):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
        terminalreporter.write_line(
            f"PostgreSQL {version}: {sum(outcomes.values())} database tests: {counts}"
        )


def _by_version(ran: list[tuple[str, str, str]]) -> dict[str, Counter]:
    grouped: dict[str, Counter] = {}
    for _, outcome, version in ran:
        grouped.setdefault(version, Counter())[outcome] += 1
    return grouped


@pytest.fixture
def database_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty UTF-8 database named after the test; its ``postgresql://`` URL."""
    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:55]
    return postgres_server.create_database(name)


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """A local moto server (the AWS stand-in) for the session; its endpoint URL."""
    with moto_server() as endpoint_url:
        yield endpoint_url


@pytest.fixture(scope="module")
def dap_emulator() -> EmulatorProcess:
    """An emulator shared by a test module: 30 base rows per table, jobs complete at once."""
    with start_emulator(rows=30) as emulator:
        yield emulator
