"""Fixtures shared by the whole suite: a PostgreSQL server and per-test databases."""

from __future__ import annotations

import re

import pytest

from local_dap.control import EmulatorProcess, start_emulator
from local_dap.postgres import PostgresServer, server_for_tests
from tests.support.moto_server import moto_server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """One PostgreSQL server for the session (throwaway, or ``CD2_TEST_DATABASE_URL``)."""
    with server_for_tests() as server:
        yield server


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
