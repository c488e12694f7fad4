"""Every JSON response the client receives validates against Instructure's OpenAPI document.

Per shared/cd2/README.md, the document's ``JsonType`` ``oneOf`` (integer vs number) is read as ``anyOf``.
The error unions of the document have the same flaw (the three 500 alternatives have identical shapes;
OutOfRangeError and SnapshotRequiredError too), so ``oneOf`` inside error responses is read as ``anyOf``
as well; the success unions (snapshot / incremental / failed job) stay strict ``oneOf``.
Login is outside the document; its answer is checked against the fields the client requires.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from urllib.parse import quote

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.local_dap.emulator.conftest import run_dap
from tests.support.paths import SHARED_DIR

OPENAPI = SHARED_DIR / "cd2" / "openapi-dap-1.0.0.json"
LOGIN_SCHEMA = {
    "type": "object",
    "properties": {
        "access_token": {"type": "string"},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
        "token_type": {"type": "string"},
    },
    "required": ["access_token", "expires_in", "scope", "token_type"],
    "additionalProperties": False,
}
# Statuses the client handles that the document does not list (403 account errors, 429 rate limits).
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "uuid": {"type": "string"},
                "message": {"type": "string"},
            },
            "required": ["type", "uuid", "message"],
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}


def _relaxed(node, in_error: bool = False):
    if isinstance(node, dict):
        result = {}
        for key, value in node.items():
            if key == "oneOf" and in_error:
                key = "anyOf"
            result[key] = _relaxed(value, in_error)
        return result
    if isinstance(node, list):
        return [_relaxed(v, in_error) for v in node]
    return node


def load_document() -> dict:
    document = json.loads(OPENAPI.read_text())
    schemas = document["components"]["schemas"]
    schemas["JsonType"] = {
        "anyOf": schemas["JsonType"]["oneOf"],
        "examples": schemas["JsonType"].get("examples"),
    }
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    operation["responses"][status] = _relaxed(response, in_error=True)
    return document


class OpenApiChecker:
    """Finds the response schema for (method, request path, status) and validates a body against it."""

    def __init__(self) -> None:
        self.document = load_document()
        self.registry = Registry().with_resource(
            "urn:dap-openapi", Resource.from_contents(self.document, default_specification=DRAFT202012)
        )
        self.templates = [
            (re.compile("^/dap" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
            for path in self.document["paths"]
        ]

    def template(self, path: str) -> str | None:
        return next((t for pattern, t in self.templates if pattern.match(path)), None)

    def schema_for(self, method: str, path: str, status: int) -> dict | None:
        template = self.template(path)
        if template is None:
            return LOGIN_SCHEMA if path == "/ids/auth/login" and status == 200 else ERROR_SCHEMA
        responses = self.document["paths"][template][method.lower()]["responses"]
        if str(status) not in responses:
            return ERROR_SCHEMA
        pointer = "/".join(["", "paths", template.replace("~", "~0").replace("/", "~1"), method.lower(),
                            "responses", str(status), "content", "application~1json", "schema"])  # fmt: skip
        return {"$ref": "urn:dap-openapi#" + quote(pointer, safe="/~")}

    def validate(self, method: str, path: str, status: int, body) -> None:
        schema = self.schema_for(method, path, status)
        jsonschema.Draft202012Validator(schema, registry=self.registry).validate(body)


def _raw(emulator, method: str, path: str, body: bytes | None = None, token: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(emulator.base_url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _token(emulator) -> str:
    basic = base64.b64encode(f"{emulator.client_id}:{emulator.client_secret}".encode()).decode()
    request = urllib.request.Request(
        emulator.base_url + "/ids/auth/login", data=b"grant_type=client_credentials", method="POST",
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["access_token"]


@pytest.fixture(scope="module")
def checker() -> OpenApiChecker:
    return OpenApiChecker()


def test_checker_rejects_a_wrong_answer(checker):
    with pytest.raises(jsonschema.ValidationError):
        checker.validate("GET", "/dap/query/canvas/table", 200, {"tables": ["a"], "extra": 1})
    with pytest.raises(jsonschema.ValidationError):
        checker.validate("GET", "/dap/job/x", 200, {"id": "x", "status": "complete", "objects": []})


def test_every_response_the_client_receives_matches_the_document(emulator, database_url, tmp_path, checker):
    assert run_dap(emulator, "list", "--namespace", "canvas").returncode == 0
    assert run_dap(emulator, "schema", "--namespace", "canvas", "--table", "courses",
                   "--output-directory", str(tmp_path)).returncode == 0  # fmt: skip
    assert run_dap(emulator, "initdb", "--namespace", "canvas", "--table", "courses,assignments",
                   "--connection-string", database_url).returncode == 0  # fmt: skip
    emulator.advance(changes=10)
    assert run_dap(emulator, "syncdb", "--namespace", "canvas", "--table", "courses,assignments",
                   "--connection-string", database_url).returncode == 0  # fmt: skip
    emulator.inject_fault("slow_job", table="users", polls=1)  # one 202 from POST, then complete
    emulator.inject_fault("job_failed", table="scores")
    for table in ("users", "scores"):
        run_dap(emulator, "snapshot", "--namespace", "canvas", "--table", table, "--format", "jsonl",
                "--output-directory", str(tmp_path))  # fmt: skip
    run_dap(emulator, "schema", "--namespace", "canvas", "--table", "no_such_table", "--output-directory",
            str(tmp_path))  # fmt: skip
    emulator.inject_fault("server_error", "list", times=3)
    run_dap(emulator, "list", "--namespace", "canvas")
    emulator.inject_fault("account_disabled", "schema")
    run_dap(
        emulator, "schema", "--namespace", "canvas", "--table", "users", "--output-directory", str(tmp_path)
    )
    # what a client could send wrong, and unauthenticated calls
    token = _token(emulator)
    data = "/dap/query/canvas/table/users/data"
    assert _raw(emulator, "POST", data, b'{"format": "tsv", "colour": "red"}', token) == 400
    assert _raw(emulator, "POST", data, b'{"format": "xml"}', token) == 400
    assert _raw(emulator, "POST", data, b'{"format": "tsv",', token) == 400
    assert _raw(emulator, "POST", "/dap/query/nowhere/table/users/data", b'{"format": "tsv"}', token) == 404
    assert _raw(emulator, "GET", "/dap/query/nowhere/table", None, token) == 404
    assert _raw(emulator, "GET", "/dap/job/no-such-job", None, token) == 404
    assert _raw(emulator, "POST", "/dap/object/url", b'[{"id": "nope/part-00000"}]', token) == 404
    assert _raw(emulator, "POST", "/dap/object/url", b'{"id": 1}', token) == 400
    for method, path in (("GET", "/dap/query/canvas/table"), ("GET", "/dap/query/canvas/table/users/schema"),
                         ("POST", data), ("GET", "/dap/job/x"), ("POST", "/dap/object/url")):  # fmt: skip
        assert _raw(emulator, method, path, b"[]" if method == "POST" else None) == 401

    seen = set()
    json_answers = [r for r in emulator.requests() if r["content_type"] == "application/json"]
    for entry in json_answers:
        assert "body" in entry, entry
        checker.validate(entry["method"], entry["path"], entry["status"], entry["body"])
        template = checker.template(entry["path"])
        if template is not None:
            seen.add((template, entry["method"], entry["status"]))
    covered = {(path, method.upper()) for path, ops in checker.document["paths"].items() for method in ops}
    assert covered <= {(t, m) for t, m, _ in seen}
    # the statuses the document defines and the emulator produced
    assert {("/job/{id}", "GET", 200), ("/query/{namespace}/table/{table}/data", "POST", 202),
            ("/query/{namespace}/table/{table}/data", "POST", 200), ("/object/url", "POST", 200),
            ("/query/{namespace}/table/{table}/data", "POST", 400), ("/query/{namespace}/table", "GET", 500),
            ("/query/{namespace}/table/{table}/schema", "GET", 404), ("/object/url", "POST", 404),
            ("/job/{id}", "GET", 401)} <= seen  # fmt: skip
    assert len(json_answers) > 30
    # no download carries a Content-Encoding and every URL names a .gz file of the requested format
    downloads = [r for r in emulator.requests() if r["endpoint"] == "download"]
    assert downloads and all(r["path"].endswith((".tsv.gz", ".json.gz")) for r in downloads)
