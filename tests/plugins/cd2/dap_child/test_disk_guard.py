"""The disk guard in the DAP child: a small ``$TMPDIR`` enough for a big table, and one object too big for
it refused before the table is touched.

Everything runs the real client over HTTP against the emulator into a real PostgreSQL, through
:class:`DapHook` (the product's own child process).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile

import pytest

from cd2.contract import Action, ErrorCategory
from cd2.hooks.dap import DapHook, DapPermanentError
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.plugins.cd2.dap_child.driving import NS, run, table_sync_row
from tests.support.paths import DAP_PYTHON

TMPFS_MIB = 2


@pytest.fixture
def small_tmpdir(monkeypatch):
    """``TMPDIR`` on a 2 MiB tmpfs (the tests run as root in CI and here); skipped where mount is refused."""
    folder = tempfile.mkdtemp(prefix="cd2-small-tmp-")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", folder],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    monkeypatch.setenv("TMPDIR", folder)
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=False)
        os.rmdir(folder)


@pytest.fixture
def big_emulator():
    """Enough accounts rows that their TSV is several times the small TMPDIR, in parts of ~1/5 of it."""
    with start_emulator(seed=3, rows=25_000, part_rows=2_000) as emulator:
        yield emulator


@pytest.fixture
def big_hook(big_emulator, database_url, monkeypatch) -> DapHook:
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(big_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    return DapHook()


def tsv_bytes(emulator, table: str) -> int:
    """The gunzipped size of the table's snapshot as the emulator serves it."""
    import urllib.request
    import zlib

    token_request = urllib.request.Request(
        emulator.base_url + "/ids/auth/login",
        data=b"grant_type=client_credentials",
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "Basic "
            + base64.b64encode(f"{emulator.client_id}:{emulator.client_secret}".encode()).decode(),
        },
    )
    token = json.loads(urllib.request.urlopen(token_request).read())["access_token"]

    def call(method: str, path: str, body) -> dict:
        request = urllib.request.Request(
            emulator.base_url + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + token},
        )
        return json.loads(urllib.request.urlopen(request).read())

    job = call("POST", f"/dap/query/{NS}/table/{table}/data", {"format": "tsv", "mode": "condensed"})
    job = call("GET", f"/dap/job/{job['id']}", None)
    total = 0
    for obj in job["objects"]:
        url = call("POST", "/dap/object/url", [obj])["urls"][obj["id"]]["url"]
        total += len(zlib.decompress(urllib.request.urlopen(url).read(), 31))
    return total


def test_a_table_larger_than_tmpdir_initializes_completely(
    big_hook, big_emulator, database_url, small_tmpdir
) -> None:
    size = tsv_bytes(big_emulator, "accounts")
    assert size > 2 * TMPFS_MIB * 1024 * 1024, f"the table's TSV ({size:,} bytes) must exceed TMPDIR"
    result = run(big_hook, Action.INIT, "accounts")
    assert (result.outcome, result.rows) == ("initialized", 25_000)
    assert big_emulator.truth(NS, "accounts") == replica_truth(database_url, NS, "accounts")
    assert os.listdir(small_tmpdir) == [], "nothing left behind in TMPDIR"


def test_an_object_larger_than_tmpdir_fails_fast_and_leaves_the_replica_untouched(
    big_hook, big_emulator, database_url, small_tmpdir, monkeypatch
) -> None:
    monkeypatch.delenv("TMPDIR")  # the first copy is built on the ordinary temp folder
    assert run(big_hook, Action.INIT, "accounts").outcome == "initialized"
    before = replica_truth(database_url, NS, "accounts")
    watermark = table_sync_row(database_url, "accounts")

    big_emulator.advance(changes=20_000)  # one incremental object far larger than the small TMPDIR
    big_emulator.configure(part_rows=1_000_000)
    monkeypatch.setenv("TMPDIR", small_tmpdir)
    with pytest.raises(DapPermanentError, match="DiskSpaceError") as failure:
        run(big_hook, Action.SYNC, "accounts")
    message = str(failure.value)
    assert f"not enough space in TMPDIR {small_tmpdir}" in message
    assert "MiB more" in message and "MiB are free" in message
    assert failure.value.error.category is ErrorCategory.PERMANENT
    assert replica_truth(database_url, NS, "accounts") == before, "previous copy untouched"
    assert table_sync_row(database_url, "accounts") == watermark
    assert os.listdir(small_tmpdir) == []
