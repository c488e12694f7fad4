"""The CLI's download commands, rate limits as the client meets them, and ``--schemas DIR``."""

from __future__ import annotations

import gzip
import json
import shutil

from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.local_dap.emulator.conftest import run_dap
from tests.support.paths import SHARED_DIR


def test_snapshot_and_incremental_commands_write_jsonl_and_csv(emulator, tmp_path):
    outcome = run_dap(emulator, "snapshot", "--namespace", "canvas", "--table", "accounts", "--format", "jsonl",
                      "--output-directory", str(tmp_path / "snap"))  # fmt: skip
    assert outcome.returncode == 0, outcome.output
    files = list((tmp_path / "snap").rglob("*.json.gz"))
    records = [json.loads(line) for f in files for line in gzip.decompress(f.read_bytes()).splitlines()]
    assert len(records) == emulator.truth("canvas", "accounts").count
    since = emulator.state()["now"]
    emulator.advance(changes=10, tables=["canvas.accounts"])
    outcome = run_dap(emulator, "incremental", "--namespace", "canvas", "--table", "accounts", "--format", "csv",
                      "--since", since, "--output-directory", str(tmp_path / "inc"))  # fmt: skip
    assert outcome.returncode == 0, outcome.output
    text = b"".join(gzip.decompress(f.read_bytes()) for f in (tmp_path / "inc").rglob("*.csv.gz")).decode()
    assert text.startswith("meta.ts,meta.action,key.id,")
    assert ",U," in text


def test_client_waits_out_the_create_job_rate_limit(postgres_server):
    """Six tables in one initdb: the sixth create-job call is over 5 per 6 s and the client retries it."""
    tables = "accounts,users,courses,enrollments,pseudonyms,scores"
    with start_emulator(rows=10, rate_limits=True, time_scale=10) as emulator:
        url = postgres_server.create_database("rate_limited")
        outcome = run_dap(
            emulator, "initdb", "--namespace", "canvas", "--table", tables, "--connection-string", url
        )
        assert outcome.returncode == 0, outcome.output
        data_calls = [r for r in emulator.requests() if r["endpoint"] == "data"]
        assert [r["status"] for r in data_calls].count(429) >= 1
        assert [r["status"] for r in data_calls].count(200) == 6
        for table in tables.split(","):
            assert replica_truth(url, "canvas", table) == emulator.truth("canvas", table)


def test_schemas_dir_serves_the_shared_schemas_including_a_real_one(tmp_path, postgres_server):
    schemas = tmp_path / "schemas" / "canvas"
    schemas.mkdir(parents=True)
    for source in (SHARED_DIR / "cd2" / "schemas" / "canvas").glob("*.json"):
        shutil.copy(source, schemas / source.name.replace(".real-v1", ""))
    tables = ",".join(sorted(p.stem for p in schemas.glob("*.json")))
    assert "courses" in tables and len(tables.split(",")) == 6
    with start_emulator(rows=25, schemas=tmp_path / "schemas") as emulator:
        url = postgres_server.create_database("shared_schemas")
        courses = json.loads((SHARED_DIR / "cd2" / "schemas" / "canvas" / "courses.real-v1.json").read_text())
        served = run_dap(emulator, "schema", "--namespace", "canvas", "--table", "courses",
                         "--output-directory", str(tmp_path / "out"))  # fmt: skip
        assert served.returncode == 0, served.output
        saved = json.loads(next((tmp_path / "out").glob("courses_schema_version_1.json")).read_text())
        assert saved["schema"]["properties"]["value"] == courses["schema"]["properties"]["value"]
        for step in ("initdb", "syncdb"):
            outcome = run_dap(
                emulator, step, "--namespace", "canvas", "--table", tables, "--connection-string", url
            )
            assert outcome.returncode == 0, outcome.output
            for table in tables.split(","):
                assert replica_truth(url, "canvas", table) == emulator.truth("canvas", table), (step, table)
            emulator.advance(changes=15)
