"""The DAP query API over aiohttp: login, tables, schemas, query jobs, object URLs and downloads."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import itertools
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from .auth import Authority
from .cache import PartCache
from .encoding import format_timestamp, parse_timestamp
from .faults import Fault, FaultBook
from .formats import EXTENSIONS, FORMATS, MODES, Encoder, gzip_chunks
from .jobs import Job
from .ratelimit import RateLimiter
from .schema import NAMESPACES, TableDef
from .source import Source
from .values import datetime_to_micros, micros_to_datetime

DOWNLOAD_URL_LIFETIME = 15 * 60
MAX_LOGGED_REQUESTS = 20_000


@dataclass
class Settings:
    """How the emulator behaves; most of it can be changed at run time through the admin API."""

    client_id: str = "emulator-client"
    client_secret: str = "emulator-secret"
    seed: int = 0
    rows: int = 100
    part_rows: int = 100_000
    job_polls: int = 0
    step_seconds: int = 3600
    rate_limits: bool = False
    time_scale: float = 1.0
    tables: list[TableDef] = field(default_factory=list)


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None, **fields) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.fields = fields
        self.headers = headers

    def response(self) -> web.Response:
        body = {"type": self.type, "uuid": str(uuid.uuid4()), "message": self.message, **self.fields}
        return web.json_response({"error": body}, status=self.status, headers=self.headers)


def validation_error(message: str, raw: str = "", near: str | None = None) -> ApiError:
    position = raw.find(near) if near else -1
    position = max(position, 0)
    line = raw.count("\n", 0, position) + 1
    column = position - (raw.rfind("\n", 0, position) + 1) + 1
    return ApiError(
        400, "ValidationError", message, location={"line": line, "column": column, "character": position + 1}
    )


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, "NotFoundError", f"{kind.capitalize()} not found: {ident}", id=ident, kind=kind)


def fault_error(fault: Fault, namespace: str | None, table: str | None) -> ApiError | None:
    """The error response a fault stands for, or None for faults acted out elsewhere."""
    if fault.kind == "server_error":
        return ApiError(fault.status, "ProcessingError", "Internal server error (injected).")
    if fault.kind == "rate_limit":
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
        return ApiError(429, "TooManyRequests", "Rate limit exceeded (injected).", headers=headers)
    if fault.kind == "unauthorized":
        return ApiError(401, "AuthenticationError", "Access token is invalid or expired (injected).")
    if fault.kind == "account_disabled":
        return ApiError(403, "AccountDisabled", "Client access has been restricted (injected).")
    if fault.kind == "not_found":
        return not_found("table" if table else "namespace", table or namespace or "unknown")
    if fault.kind == "out_of_range":
        return ApiError(
            400,
            "OutOfRangeError",
            "Data queried outside of the allowed time range (injected).",
            since=format_timestamp(dt.datetime.now(dt.UTC)),
        )
    if fault.kind == "snapshot_required":
        return ApiError(
            400,
            "SnapshotRequiredError",
            "The table was reloaded; a new snapshot is required to keep data consistency (injected).",
            since=format_timestamp(dt.datetime.now(dt.UTC)),
        )
    return None


class Emulator:
    """State of one emulator: settings, data source, jobs, faults, limits and the request log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.authority = Authority(settings.client_id, settings.client_secret, secrets.token_bytes(32))
        self.url_key = secrets.token_bytes(32)
        self.cache: PartCache | None = None
        self.reset()

    def reset(self, seed: int | None = None, rows: int | None = None) -> None:
        s = self.settings
        if seed is not None:
            s.seed = seed
        if rows is not None:
            s.rows = rows
        self.source = Source(s.tables, s.seed, s.rows, dt.timedelta(seconds=s.step_seconds))
        self.jobs: dict[str, Job] = {}
        self.faults = FaultBook(seed=s.seed)
        self.limiter = RateLimiter(time_scale=s.time_scale) if s.rate_limits else None
        self.requests: list[dict] = []

    # -- helpers ----------------------------------------------------------------------------------
    def check(self, request: web.Request, endpoint: str, namespace=None, table=None) -> Fault | None:
        """Authenticate, enforce rate limits, and draw a fault; raises the error to answer."""
        request["endpoint"], request["namespace"], request["table"] = endpoint, namespace, table
        if endpoint not in ("login", "download") and not self.authority.check_bearer(
            request.headers.get("Authorization")
        ):
            raise ApiError(401, "AuthenticationError", "Missing or invalid access token.")
        if self.limiter is not None:
            wait = self.limiter.check(endpoint)
            if wait is not None:
                raise ApiError(
                    429,
                    "TooManyRequests",
                    f"Rate limit exceeded for {endpoint}.",
                    headers={"Retry-After": str(wait)},
                )
        fault = self.faults.take(endpoint, namespace, table)
        if fault is None:
            return None
        request["fault"] = fault.kind
        if fault.kind == "malformed_json":
            raise MalformedJson()
        error = fault_error(fault, namespace, table)
        if error is not None:
            raise error
        return fault

    def table(self, namespace: str, name: str):
        if namespace not in NAMESPACES:
            raise not_found("namespace", namespace)
        source = self.source.table(namespace, name)
        if source is None:
            raise not_found("table", name)
        return source

    # -- API handlers -----------------------------------------------------------------------------
    async def login(self, request: web.Request) -> web.Response:
        self.check(request, "login")
        form = await request.post()
        if not self.authority.check_basic(request.headers.get("Authorization")):
            raise ApiError(401, "AuthenticationError", "Invalid client credentials.")
        if form.get("grant_type") != "client_credentials":
            raise validation_error("grant_type must be client_credentials")
        return web.json_response(
            {
                "access_token": self.authority.issue(),
                "expires_in": 3600,
                "scope": "urn:canvas:dap",
                "token_type": "Bearer",
            }
        )

    async def list_tables(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        self.check(request, "list", namespace)
        if namespace not in NAMESPACES:
            raise not_found("namespace", namespace)
        return web.json_response({"tables": self.source.names(namespace)})

    async def schema(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["table"]
        self.check(request, "schema", namespace, name)
        table = self.table(namespace, name).table
        return web.json_response({"schema": table.to_schema(), "version": table.version})

    async def create_job(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["table"]
        fault = self.check(request, "data", namespace, name)
        source = self.table(namespace, name)
        query = parse_query(await request.text())
        job = Job(namespace, source.table, query["format"], query.get("mode", "expanded"))
        now = self.source.now
        part_rows = self.settings.part_rows
        if "since" in query:
            since = datetime_to_micros(query["since"])
            until = min(datetime_to_micros(query["until"]), now) if "until" in query else now
            if source.retention is not None and since < now - source.retention:
                earliest = micros_to_datetime(now - source.retention)
                raise ApiError(
                    400,
                    "OutOfRangeError",
                    "The since timestamp is older than the retention period; run a new snapshot.",
                    since=format_timestamp(earliest),
                    until=format_timestamp(micros_to_datetime(now)),
                )
            job.since, job.until = since, max(until, since)
            indexes = source.changed_indexes(job.since, job.until)
            job.parts = [indexes[i : i + part_rows] for i in range(0, len(indexes), part_rows)] or [[]]
        else:
            job.at = now
            total = source.row_count()
            job.parts = [(i, i + part_rows) for i in range(0, total, part_rows)] or [(0, 0)]
        job.polls = self.settings.job_polls
        if fault is not None and fault.kind == "slow_job":
            job.polls = fault.polls
        if fault is not None and fault.kind == "job_failed":
            job.failed = True
        self.jobs[job.id] = job
        status, body = job.next_answer(first=True)
        return web.json_response(body, status=status)

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = self.jobs.get(job_id)
        self.check(request, "job", job and job.namespace, job and job.table.name)
        if job is None or job.expires_at < dt.datetime.now(dt.UTC):
            raise not_found("job", job_id)
        status, body = job.next_answer(first=False)
        return web.json_response(body, status=status)

    async def object_urls(self, request: web.Request) -> web.Response:
        raw = await request.text()
        objects = parse_objects(raw)
        jobs = [self.jobs.get(o.partition("/")[0]) for o in objects]
        first = next((j for j in jobs if j is not None), None)
        self.check(request, "url", first and first.namespace, first and first.table.name)
        urls = {}
        base = f"{request.scheme}://{request.host}"
        for object_id, job in zip(objects, jobs, strict=True):
            part = _part_number(object_id)
            if job is None or part is None or part >= len(job.parts):
                raise not_found("object", object_id)
            urls[object_id] = {"url": base + self.signed_path(job, part)}
        return web.json_response({"urls": urls})

    def signed_path(self, job: Job, part: int) -> str:
        name = f"{job.table.name}-part-{part:05d}.{EXTENSIONS.get(job.format, job.format)}.gz"
        path = f"/_files/{job.id}/{part}/{name}"
        expires = int(time.time()) + DOWNLOAD_URL_LIFETIME
        return f"{path}?expires={expires}&signature={self._sign(path, expires)}"

    def _sign(self, path: str, expires: int) -> str:
        return hmac.new(self.url_key, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()

    async def download(self, request: web.Request) -> web.StreamResponse:
        job = self.jobs.get(request.match_info["job_id"])
        part = int(request.match_info["part"]) if request.match_info["part"].isdigit() else -1
        request["endpoint"] = "download"
        try:
            expires = int(request.query.get("expires", "0"))
        except ValueError:
            expires = 0
        signature = request.query.get("signature", "")
        if not hmac.compare_digest(signature, self._sign(request.path, expires)) or expires < time.time():
            return web.Response(status=403, text="Request has expired or the signature does not match.")
        if job is None or not 0 <= part < len(job.parts):
            return web.Response(status=404, text="No such object.")
        fault = self.check(request, "download", job.namespace, job.table.name)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if fault is not None and fault.kind == "truncated_gzip" and fault.line_boundary:
            # whole lines, no gzip trailer: only a reader that checks the end of the stream notices
            chunks = list(self.part_chunks(job, part, batch=5, flush=True))
            data = b"".join(chunks[: max(1, (len(chunks) - 1) // 2)])
            return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})
        chunks = self.part_chunks(job, part)
        if fault is not None and fault.kind in ("broken_download", "truncated_gzip"):
            data = b"".join(chunks)
            cut = max(1, len(data) * 6 // 10)
            if fault.kind == "truncated_gzip":
                return web.Response(body=data[:cut], headers={"Content-Type": "application/octet-stream"})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[:cut])
            request.transport.close()
            return response
        if self.cache is not None:
            path = await self.cache.path(self.part_key(job, part), lambda: self.part_chunks(job, part))
            return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    def part_key(self, job: Job, part: int) -> str:
        """What part ``part`` of ``job`` contains depends on, as a cache key (see :mod:`.cache`)."""
        source = self.source.table(job.namespace, job.table.name)
        return PartCache.key(
            self.settings.seed,
            source.base_rows,
            job.namespace,
            job.table.name,
            [(epoch.since, epoch.table.version, epoch.table.to_schema()) for epoch in source.epochs],
            job.table.to_schema(),
            len(source.log_ts),
            job.format,
            job.mode,
            job.at,
            job.since,
            job.until,
            source.retention if source.table.append_only else None,
            hashlib.sha256(repr(job.parts[part]).encode()).hexdigest(),
        )

    def part_chunks(self, job: Job, part: int, batch: int = 500, flush: bool = False):
        source = self.source.table(job.namespace, job.table.name)
        encoder = Encoder(job.table, job.format, job.mode, job.incremental)
        if job.incremental:
            records = source.incremental(job.since, job.until, job.table, job.parts[part])
        else:
            first, last = job.parts[part]
            records = source.snapshot(job.at, job.table, first, last)
        header = encoder.header()
        lines = itertools.chain([header] if header else [], map(encoder.line, records))
        return gzip_chunks(lines, batch=batch, flush=flush)


class MalformedJson(Exception):
    """Answer 200 with a JSON content type and a body that is not JSON."""


def parse_query(raw: str) -> dict:
    """Validate a data request body the way the real API does (400 ValidationError)."""
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            "ValidationError",
            f"Malformed JSON: {error.msg}",
            location={"line": error.lineno, "column": error.colno, "character": error.pos + 1},
        ) from None
    if not isinstance(body, dict):
        raise validation_error("Expected a JSON object (SnapshotQuery or IncrementalQuery).", raw)
    unknown = sorted(set(body) - {"format", "mode", "since", "until"})
    if unknown:
        raise validation_error(f"Unknown field(s): {', '.join(unknown)}.", raw, f'"{unknown[0]}"')
    if body.get("format") not in FORMATS:
        raise validation_error(f"format must be one of {', '.join(FORMATS)}.", raw, '"format"')
    if body["format"] == "parquet":
        raise validation_error(
            "The local DAP emulator does not produce parquet; use tsv, csv or jsonl.", raw, '"format"'
        )
    if "mode" in body and body["mode"] not in MODES:
        raise validation_error(f"mode must be one of {', '.join(MODES)}.", raw, '"mode"')
    if "until" in body and "since" not in body:
        raise validation_error("until requires since.", raw, '"until"')
    for name in ("since", "until"):
        if name in body:
            try:
                body[name] = parse_timestamp(body[name])
            except (TypeError, ValueError, AttributeError):
                raise validation_error(
                    f"{name} must be an RFC 3339 date-time with a time zone.", raw, f'"{name}"'
                ) from None
    if "until" in body and body["until"] < body["since"]:
        raise validation_error("until must not be earlier than since.", raw, '"until"')
    return body


def parse_objects(raw: str) -> list[str]:
    try:
        body = json.loads(raw)
    except json.JSONDecodeError:
        raise validation_error("Malformed JSON.", raw) from None
    if not isinstance(body, list) or not all(
        isinstance(o, dict) and set(o) == {"id"} and isinstance(o["id"], str) for o in body
    ):
        raise validation_error('Expected an array of objects like {"id": "..."}.', raw)
    return [o["id"] for o in body]


def _part_number(object_id: str) -> int | None:
    _, _, tail = object_id.partition("/part-")
    return int(tail) if tail.isdigit() else None


@web.middleware
async def errors_and_log(request: web.Request, handler):
    """Turn ApiError into JSON answers and keep a log of every request and the JSON it got back."""
    emulator: Emulator = request.app["emulator"]
    try:
        response = await handler(request)
    except ApiError as error:
        response = error.response()
    except MalformedJson:
        response = web.Response(status=200, text='{"tables": ["acc', content_type="application/json")
    except web.HTTPException as error:
        if not request.path.startswith(("/dap/", "/ids/")):
            raise
        response = ApiError(
            error.status,
            "NotFoundError" if error.status == 404 else "ValidationError",
            error.reason,
            **(
                {"id": request.path, "kind": "path"}
                if error.status == 404
                else {"location": {"line": 1, "column": 1, "character": 1}}
            ),
        ).response()
    if not request.path.startswith("/_emulator/") and len(emulator.requests) < MAX_LOGGED_REQUESTS:
        entry = {
            "method": request.method,
            "path": request.path,
            "endpoint": request.get("endpoint"),
            "namespace": request.get("namespace"),
            "table": request.get("table"),
            "status": response.status,
            "fault": request.get("fault"),
            "content_type": response.content_type,
            "time": time.time(),
        }
        if isinstance(response, web.Response) and response.content_type == "application/json":
            try:
                entry["body"] = json.loads(response.body)
            except (TypeError, ValueError):
                entry["raw_body"] = bytes(response.body).decode(errors="replace")
        emulator.requests.append(entry)
    return response


def make_app(emulator: Emulator) -> web.Application:
    """The aiohttp application: the DAP API plus the admin API under ``/_emulator/``."""
    from .admin import add_admin_routes

    app = web.Application(middlewares=[errors_and_log], client_max_size=16 * 1024 * 1024)
    app["emulator"] = emulator
    app.router.add_post("/ids/auth/login", emulator.login)
    app.router.add_get("/dap/query/{namespace}/table", emulator.list_tables)
    app.router.add_get("/dap/query/{namespace}/table/{table}/schema", emulator.schema)
    app.router.add_post("/dap/query/{namespace}/table/{table}/data", emulator.create_job)
    app.router.add_get("/dap/job/{job_id}", emulator.get_job)
    app.router.add_post("/dap/object/url", emulator.object_urls)
    app.router.add_get("/_files/{job_id}/{part}/{name}", emulator.download)
    add_admin_routes(app, emulator)
    return app
