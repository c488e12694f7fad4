"""The wire protocol, checked with plain HTTP: auth, errors, jobs, object URLs, formats, time ranges."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import gzip
import io
import json
import urllib.error
import urllib.request

import pytest

from local_dap.control import EmulatorError, start_emulator


def call(emulator, method: str, path: str, body=None, token: str | None = None, basic: str | None = None,
         form: str | None = None, raw: bytes | None = None):  # fmt: skip
    """(status, headers, parsed JSON or raw bytes) of one request."""
    headers = {}
    data = raw
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data, headers["Content-Type"] = form.encode(), "application/x-www-form-urlencoded"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    url = path if path.startswith("http") else emulator.base_url + path
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            status, head, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, payload = error.code, error.headers, error.read()
    if head.get("Content-Type", "").startswith("application/json"):
        return status, head, json.loads(payload)
    return status, head, payload


def login(emulator) -> str:
    status, _, body = call(emulator, "POST", "/ids/auth/login", form="grant_type=client_credentials",
                           basic=f"{emulator.client_id}:{emulator.client_secret}")  # fmt: skip
    assert status == 200
    return body["access_token"]


def run_query(emulator, token, namespace, table, query) -> tuple[dict, list[bytes]]:
    """Create a job, fetch it, trade its objects for URLs and download them (gunzipped)."""
    status, _, job = call(emulator, "POST", f"/dap/query/{namespace}/table/{table}/data", query, token)
    assert status == 200, job
    status, _, job = call(emulator, "GET", f"/dap/job/{job['id']}", token=token)
    assert status == 200 and job["status"] == "complete"
    files = []
    for obj in job["objects"]:
        _, _, urls = call(emulator, "POST", "/dap/object/url", [obj], token)
        status, headers, data = call(emulator, "GET", urls["urls"][obj["id"]]["url"])
        assert status == 200 and "Content-Encoding" not in headers
        files.append(gzip.decompress(data))
    return job, files


@pytest.fixture(scope="module")
def server():
    with start_emulator(rows=30, seed=7) as emulator:
        yield emulator


def test_login_issues_a_jwt_with_numeric_exp_and_rejects_wrong_credentials(server):
    token = login(server)
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert isinstance(claims["exp"], int) and claims["exp"] > dt.datetime.now().timestamp() + 3000
    status, _, body = call(server, "POST", "/ids/auth/login", form="grant_type=client_credentials",
                           basic=f"{server.client_id}:wrong")  # fmt: skip
    assert status == 401 and body["error"]["type"] == "AuthenticationError"


def test_bearer_token_is_required_and_checked(server):
    token = login(server)
    assert call(server, "GET", "/dap/query/canvas/table")[0] == 401
    assert call(server, "GET", "/dap/query/canvas/table", token=token[:-2] + "xx")[0] == 401
    status, headers, body = call(server, "GET", "/dap/query/canvas/table", token=token)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert {"accounts", "users", "courses", "enrollments", "submissions", "assignments", "pseudonyms",
            "scores"} <= set(body["tables"])  # fmt: skip
    assert call(server, "GET", "/dap/query/new_quizzes/table", token=token)[2] == {"tables": []}
    status, _, body = call(server, "GET", "/dap/query/nope/table", token=token)
    assert status == 404 and body["error"]["kind"] == "namespace"


def test_schema_has_the_shape_of_the_real_api(server):
    status, _, body = call(server, "GET", "/dap/query/canvas/table/courses/schema", token=login(server))
    schema = body["schema"]
    assert status == 200 and body["version"] == 1 and schema["$schema"].startswith("https://json-schema.org")
    assert schema["required"] == ["key"] and list(schema["properties"]) == ["meta", "key", "value"]
    value = schema["properties"]["value"]
    assert value["additionalProperties"] is False and "workflow_state" in value["required"]
    assert "__dap_unspecified__" in value["properties"]["workflow_state"]["enum"]
    assert value["properties"]["syllabus_body"]["oneOf"][0]["const"] == "__dap_oversized_truncated__"
    assert value["properties"]["settings"]["additionalProperties"] is False
    assert all("description" in node for node in value["properties"].values())


def test_snapshot_tsv_matches_the_truth_and_urls_end_in_tsv_gz(server):
    token = login(server)
    job, files = run_query(server, token, "canvas", "submissions", {"format": "tsv", "mode": "condensed"})
    assert set(job) == {"id", "status", "expires_at", "objects", "schema_version", "at"}
    expires = dt.datetime.fromisoformat(job["expires_at"])
    assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    _, _, urls = call(server, "POST", "/dap/object/url", job["objects"], token)
    assert all(u["url"].split("?")[0].endswith(".tsv.gz") for u in urls["urls"].values())
    lines = b"".join(files).decode().splitlines()
    assert lines[0].split("\t")[:3] == ["meta.ts", "key.id", "value.assignment_id"]
    assert len(lines) - 1 == server.truth("canvas", "submissions").count == 30
    assert all(line for line in lines) and "\\N" in b"".join(files).decode()


def test_incremental_returns_updates_and_deletes_in_since_until(server):
    token = login(server)
    snapshot, _ = run_query(server, token, "canvas", "accounts", {"format": "tsv"})
    server.advance(changes=20, tables=["canvas.accounts"])
    job, files = run_query(server, token, "canvas", "accounts", {"format": "tsv", "since": snapshot["at"]})
    assert job["since"] == snapshot["at"] and job["until"] > job["since"]
    rows = [line.split("\t") for line in files[0].decode().splitlines()]
    assert rows[0][:3] == ["meta.ts", "meta.action", "key.id"]
    actions = {row[1] for row in rows[1:]}
    assert actions == {"U", "D"}
    assert all(set(row[3:]) == {"\\N"} for row in rows[1:] if row[1] == "D")
    assert all(job["since"][:19] <= row[0][:19] < job["until"][:19] for row in rows[1:])
    again, files = run_query(server, token, "canvas", "accounts", {"format": "tsv", "since": job["until"]})
    assert files[0].decode().count("\n") == 1  # header only: until is exclusive, since inclusive


def test_an_advance_makes_the_change_mix_it_is_given(server):
    made = server.advance(changes=220, tables=["canvas.users"], change_mix={"update": 10, "delete": 1})
    counts = made["changes"]["canvas.users"]
    assert counts["insert"] == counts["soft_delete"] == 0 and counts["update"] + counts["delete"] == 220
    assert 8 <= counts["update"] / counts["delete"] <= 14, counts


def test_an_advance_with_an_unknown_change_kind_is_refused_before_the_clock_moves(server):
    before = server.state()
    with pytest.raises(EmulatorError, match="400.*a change mix maps insert, update, soft_delete, delete"):
        server.advance(changes=5, change_mix={"upsert": 1})
    after = server.state()
    assert (after["steps"], after["now"]) == (before["steps"], before["now"])


def test_jsonl_csv_and_expanded_mode(server):
    token = login(server)
    _, files = run_query(server, token, "canvas", "courses", {"format": "jsonl"})
    records = [json.loads(line) for line in files[0].splitlines()]
    assert len(records) == server.truth("canvas", "courses").count
    assert set(records[0]) == {"meta", "key", "value"} and None not in records[0]["value"].values()
    _, files = run_query(server, token, "canvas", "courses", {"format": "csv", "mode": "expanded"})
    table = list(csv.reader(io.StringIO(files[0].decode())))
    assert "value.settings.hide_final_grades" in table[0] and "value.settings" not in table[0]
    assert len(table) - 1 == len(records)
    _, _, urls = call(server, "POST", "/dap/object/url", [{"id": "x/part-00000"}], token)
    assert urls["error"]["kind"] == "object"


@pytest.mark.parametrize(
    ("body", "near"),
    [
        ({"format": "tsv", "filter": "x"}, "filter"),
        ({"format": "xml"}, "format"),
        ({"format": "parquet"}, "format"),
        ({"format": "tsv", "mode": "flat"}, "mode"),
        ({"format": "tsv", "since": "yesterday"}, "since"),
        ({"mode": "condensed"}, "format"),
    ],
)
def test_bad_requests_get_a_validation_error(server, body, near):
    status, _, answer = call(server, "POST", "/dap/query/canvas/table/users/data", body, login(server))
    error = answer["error"]
    assert status == 400 and error["type"] == "ValidationError"
    raw = json.dumps(body)
    expected = raw.find(f'"{near}"') + 1 or 1
    assert error["location"] == {"line": 1, "column": expected, "character": expected}


def test_job_polls_waiting_running_complete(server):
    token = login(server)
    server.configure(job_polls=2)
    try:
        status, _, job = call(server, "POST", "/dap/query/canvas/table/users/data", {"format": "tsv"}, token)
        assert (status, job["status"], set(job)) == (202, "waiting", {"id", "status", "expires_at"})
        answers = [call(server, "GET", f"/dap/job/{job['id']}", token=token) for _ in range(2)]
        assert [(s, b["status"]) for s, _, b in answers] == [(202, "running"), (200, "complete")]
    finally:
        server.configure(job_polls=0)


def test_parts_split_the_snapshot(server):
    token = login(server)
    server.configure(part_rows=8)
    try:
        job, files = run_query(server, token, "canvas", "scores", {"format": "tsv"})
    finally:
        server.configure(part_rows=100_000)
    assert len(job["objects"]) == 4
    assert sum(f.decode().count("\n") - 1 for f in files) == server.truth("canvas", "scores").count


def test_same_seed_same_data_other_seed_other_data(server):
    with start_emulator(rows=30, seed=7) as twin, start_emulator(rows=30, seed=8) as other:
        assert twin.truth("canvas", "users") == start_truth(server)
        assert other.truth("canvas", "users") != start_truth(server)


def start_truth(server):
    """The truth of canvas.users at the start (the module's emulator is reset first)."""
    server.reset()
    return server.truth("canvas", "users")


def test_rate_limits_answer_429_with_retry_after(server):
    token = login(server)
    server.configure(rate_limits=True, time_scale=10)  # 5 per 6 seconds
    try:
        statuses = [call(server, "GET", "/dap/query/canvas/table", token=token) for _ in range(6)]
    finally:
        server.configure(rate_limits=False)
    assert [s for s, _, _ in statuses] == [200] * 5 + [429]
    assert 1 <= int(statuses[-1][1]["Retry-After"]) <= 6
