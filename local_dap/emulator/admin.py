"""The admin API under ``/_emulator/``: clock, truth, faults, schema changes, settings, reset, request log.

All bodies and answers are JSON. See ``fixture.EmulatorProcess`` for the Python side.
"""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from local_dap.truth import TruthBuilder

from .encoding import to_json
from .ratelimit import RateLimiter
from .schema_changes import apply_change
from .values import datetime_to_micros, micros_to_datetime

MAX_TRUTH_ROWS = 10_000


def add_admin_routes(app: web.Application, emulator) -> None:
    async def body(request: web.Request) -> dict:
        return await request.json() if request.can_read_body else {}

    def bad(message: str) -> web.Response:
        return web.json_response({"error": message}, status=400)

    async def state(request: web.Request) -> web.Response:
        source = emulator.source
        tables = {
            f"{ns}.{name}": {
                "version": t.table.version,
                "row_ids": t.row_count(),
                "changes": len(t.log_ts),
                "retention_seconds": None if t.retention is None else t.retention // 1_000_000,
                "columns": [c.name for c in t.table.all_columns],
            }
            for (ns, name), t in sorted(source.tables.items())
        }
        s = emulator.settings
        return web.json_response(
            {
                "now": to_json(_dt(source.now)),
                "steps": source.steps,
                "seed": s.seed,
                "rows": s.rows,
                "job_polls": s.job_polls,
                "part_rows": s.part_rows,
                "rate_limits": emulator.limiter is not None,
                "tables": tables,
            }
        )

    async def advance(request: web.Request) -> web.Response:
        spec = await body(request)
        try:
            result = emulator.source.advance(
                changes=int(spec.get("changes", 10)),
                steps=int(spec.get("steps", 1)),
                tables=spec.get("tables"),
                change_mix=spec.get("change_mix"),
            )
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        result["now"] = to_json(_dt(result["now"]))
        return web.json_response(result)

    async def truth(request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["table"]
        source = emulator.source.table(ns, name)
        if source is None:
            return web.json_response({"error": f"no table {ns}.{name}"}, status=404)
        table = source.table
        builder = TruthBuilder([c.name for c in table.all_columns])
        want_rows = request.query.get("rows") in ("1", "true")
        everything = request.query.get("everything") in ("1", "true")
        since = request.query.get("since")
        oldest = datetime_to_micros(dt.datetime.fromisoformat(since)) if since else None
        rows = []
        for record in source.snapshot(emulator.source.now, table, everything=everything):
            if oldest is not None and record.ts < oldest:
                continue
            row = {table.key.name: record.key, **record.values}
            builder.add(row)
            if want_rows and len(rows) < MAX_TRUTH_ROWS:
                rows.append({k: to_json(v) for k, v in row.items()})
        result = builder.result()
        answer = {"count": result.count, "checksum": result.checksum, "columns": list(result.columns)}
        if want_rows:
            answer["rows"] = rows
        return web.json_response(answer)

    async def add_fault(request: web.Request) -> web.Response:
        try:
            fault = emulator.faults.add(await body(request))
        except (TypeError, ValueError) as error:
            return bad(str(error))
        return web.json_response({"id": fault.id, "kind": fault.kind, "endpoint": fault.endpoint})

    async def list_faults(request: web.Request) -> web.Response:
        return web.json_response({"faults": emulator.faults.describe()})

    async def clear_faults(request: web.Request) -> web.Response:
        emulator.faults.clear()
        return web.json_response({"faults": []})

    async def change_schema(request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["table"]
        source = emulator.source.table(ns, name)
        if source is None:
            return web.json_response({"error": f"no table {ns}.{name}"}, status=404)
        spec = await body(request)
        try:
            new, summary = apply_change(
                source.table, spec.get("change", ""), spec.get("column"), spec.get("value")
            )
        except ValueError as error:
            return bad(str(error))
        source.set_schema(new, emulator.source.now)
        return web.json_response(summary)

    async def configure(request: web.Request) -> web.Response:
        spec = await body(request)
        s = emulator.settings
        for name in ("job_polls", "part_rows"):
            if name in spec:
                setattr(s, name, int(spec[name]))
        for label, hours in (spec.get("retention_hours") or {}).items():
            ns, _, name = label.partition(".")
            table = emulator.source.table(ns, name)
            if table is None:
                return bad(f"no table {label}")
            table.retention = None if hours is None else int(float(hours) * 3_600_000_000)
        if "rate_limits" in spec or "time_scale" in spec:
            s.time_scale = float(spec.get("time_scale", s.time_scale))
            limits = spec.get("rate_limits", True)
            if limits is False:
                emulator.limiter = None
            else:
                emulator.limiter = RateLimiter(limits if isinstance(limits, dict) else None, s.time_scale)
        return await state(request)

    async def reset(request: web.Request) -> web.Response:
        spec = await body(request)
        emulator.reset(seed=spec.get("seed"), rows=spec.get("rows"))
        return await state(request)

    async def requests_log(request: web.Request) -> web.Response:
        return web.json_response({"requests": emulator.requests})

    async def clear_requests(request: web.Request) -> web.Response:
        emulator.requests.clear()
        return web.json_response({"requests": []})

    r = app.router
    r.add_get("/_emulator/state", state)
    r.add_post("/_emulator/advance", advance)
    r.add_get("/_emulator/truth/{namespace}/{table}", truth)
    r.add_post("/_emulator/faults", add_fault)
    r.add_get("/_emulator/faults", list_faults)
    r.add_delete("/_emulator/faults", clear_faults)
    r.add_post("/_emulator/schema/{namespace}/{table}", change_schema)
    r.add_post("/_emulator/config", configure)
    r.add_post("/_emulator/reset", reset)
    r.add_get("/_emulator/requests", requests_log)
    r.add_delete("/_emulator/requests", clear_requests)


def _dt(micros: int):
    return micros_to_datetime(micros)
