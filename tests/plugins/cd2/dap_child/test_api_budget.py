"""The API budget pacer: its sliding window shared by every process through the target database, its
back-off, and a 429 from another consumer of the same credentials waited out inside the child.

The pacer checks run in the DAP interpreter (where ``asyncpg`` and the module live) against the real
test server; the 429 case runs a real table job against the emulator enforcing the published limits.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from cd2.contract import Action, TableJob
from cd2.hooks.dap import DapHook
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.support.paths import DAP_PYTHON, REPO_ROOT

WINDOW = 1.5
SCRIPT = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
from cd2.contract import ApiEndpoint
from cd2.dap_child.api_budget import Pacer, endpoint_of, retry_after_seconds

URL, WINDOW = sys.argv[2], float(sys.argv[3])

async def taker(pacer, count, times):
    for _ in range(count):
        await pacer.take(ApiEndpoint.CREATE_JOB)
        times.append(time.time())

async def main():
    # three workers' children, each with its own connection, sharing one client id's budget
    times = []
    pacers = [Pacer(URL, "client-a", {"create_job": 5}, WINDOW) for _ in range(3)]
    for pacer in pacers:
        await pacer.__aenter__()
    await asyncio.gather(*(taker(pacer, 4, times) for pacer in pacers))
    # another client id has its own budget
    other = Pacer(URL, "client-b", {"create_job": 5}, WINDOW)
    async with other:
        other_waited = [await other.take(ApiEndpoint.CREATE_JOB) for _ in range(5)]
    for pacer in pacers:
        await pacer.__aexit__(None, None, None)
    # a 429's Retry-After blocks the endpoint for every process of the same client id
    first, second = (Pacer(URL, "client-c", {"create_job": 5}, WINDOW) for _ in range(2))
    async with first, second:
        await first.back_off(ApiEndpoint.CREATE_JOB, WINDOW)
        blocked = await second.take(ApiEndpoint.CREATE_JOB)
    print(json.dumps({
        "times": sorted(times),
        "other_waited": other_waited,
        "blocked": blocked,
        "endpoints": [str(endpoint_of(m, u)) for m, u in [
            ("POST", "https://api/dap/query/canvas/table/users/data"),
            ("GET", "https://api/dap/query/canvas/table"),
            ("GET", "https://api/dap/query/canvas/table/users/schema"),
            ("GET", "https://api/dap/job/abc?x=1"),
            ("POST", "https://api/dap/object/url"),
            ("POST", "https://api/ids/auth/login"),
            ("GET", "https://files/part-00000.tsv.gz"),
        ]],
        "retry_after": [retry_after_seconds(v) for v in ("7", "junk", None, "-3")],
    }))

asyncio.run(main())
"""


def test_processes_share_one_sliding_window_per_client_id_and_back_off_together(database_url):
    result = subprocess.run(
        [str(DAP_PYTHON), "-c", SCRIPT, str(REPO_ROOT / "plugins"), database_url, str(WINDOW)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(result.stdout)
    times = got["times"]
    assert len(times) == 12
    # never more than 5 calls in any window, whichever of the three processes made them
    assert all(later - earlier >= WINDOW for earlier, later in zip(times, times[5:], strict=False)), times
    assert got["other_waited"] == [0.0] * 5, "another client id does not wait for this one's budget"
    assert got["blocked"] >= WINDOW * 0.9, "a back-off holds every process of the client id"
    assert got["endpoints"] == [
        "create_job",
        "list_tables",
        "schema",
        "get_job",
        "object_urls",
        "None",
        "None",
    ]
    assert got["retry_after"] == [7.0, 30.0, 30.0, 0.0]


@pytest.fixture
def limited_emulator():
    # 5 jobs per 3 s, as the API's 5 a minute at 20 times the speed
    with start_emulator(rows=20, rate_limits=True, time_scale=20) as emulator:
        yield emulator


def test_a_foreign_consumers_429_is_waited_out_in_the_child_not_retried(
    limited_emulator, database_url, monkeypatch, capfd
):
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(limited_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    # another user of the same client id (the dap CLI, say) spends the whole create-job budget
    token = limited_emulator.login()
    assert [limited_emulator.create_job("canvas", "accounts", token) for _ in range(5)] == [200] * 5
    job = TableJob(action=Action.INIT, namespace="canvas", table="users", api_limit_window_seconds=3.0)
    result = DapHook().run_table_job(job)
    task_log = "".join(capfd.readouterr())
    assert result.outcome == "initialized" and result.error is None
    ours = [r for r in limited_emulator.requests() if r["endpoint"] == "data" and r["table"] == "users"]
    assert [r["status"] for r in ours] == [429, 200], "one 429, waited out, then the job"
    assert "answered 429 to a create-job call: waiting" in task_log
    assert limited_emulator.truth("canvas", "users") == replica_truth(database_url, "canvas", "users")


def list_tables_from_two_instances(
    emulator, postgres_server, monkeypatch, *, shared_store: bool
) -> list[int]:
    """Instances a and b, one client id, each writing its own database: 4 list-tables jobs each at once
    (8 calls against a budget of 5 per window); the statuses the API answered them with."""
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    monkeypatch.setenv("AIRFLOW_CONN_DAP_A", json.dumps(dap_connection(emulator)))
    suffix = "shared" if shared_store else "own"
    for name in ("a", "b"):
        url = postgres_server.create_database(f"t_budget_{suffix}_{name}")
        monkeypatch.setenv(f"AIRFLOW_CONN_CD2_POSTGRES_{name.upper()}", json.dumps(postgres_connection(url)))
    hooks = [
        DapHook(
            dap_conn_id="dap_a",
            postgres_conn_id=f"cd2_postgres_{name}",
            budget_conn_id="cd2_postgres_a" if shared_store else None,
        )
        for name in ("a", "b")
    ]
    emulator.clear_requests()
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(hook.list_tables, ["canvas"], api_limit_window_seconds=3.0) for hook in hooks * 4]
        assert all("accounts" in job.result()["canvas"] for job in jobs)
    return [r["status"] for r in emulator.requests() if r["endpoint"] == "list"]


def test_instances_sharing_a_client_id_share_its_budget_whatever_databases_they_write(
    limited_emulator, postgres_server, monkeypatch
):
    # The DAG gives every instance the first instance's database as its budget store: no 429.
    statuses = list_tables_from_two_instances(
        limited_emulator, postgres_server, monkeypatch, shared_store=True
    )
    assert statuses == [200] * 8
    # Each keeping its budget in its own database, the two spend the one client id's budget twice over.
    statuses = list_tables_from_two_instances(
        limited_emulator, postgres_server, monkeypatch, shared_store=False
    )
    assert 429 in statuses and statuses.count(200) == 8
