"""Injectable faults: what goes wrong, where (endpoint, namespace, table) and how often."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

ENDPOINTS = ("login", "list", "schema", "data", "job", "url", "download")
KINDS = {
    "server_error": ENDPOINTS,  # 5xx (``status``, default 500)
    "rate_limit": ENDPOINTS,  # 429 with ``Retry-After: retry_after``
    "unauthorized": ENDPOINTS,  # 401 AuthenticationError
    "account_disabled": ENDPOINTS,  # 403 AccountDisabled
    "not_found": ENDPOINTS,  # 404 NotFoundError
    "out_of_range": ("data",),  # 400 OutOfRangeError
    "snapshot_required": ("data",),  # 400 SnapshotRequiredError (the table was reloaded upstream)
    "malformed_json": ("login", "list", "schema", "data", "job", "url"),  # 200, body is not JSON
    "job_failed": ("data",),  # the job ends ``failed``
    "slow_job": ("data",),  # the job stays waiting/running for ``polls`` polls
    "broken_download": ("download",),  # the connection drops mid-stream
    "truncated_gzip": ("download",),  # a complete response whose gzip stream is cut short
    # (mid-line, or with ``line_boundary`` after a whole line, which a lenient reader cannot notice)
}


@dataclass
class Fault:
    """One fault rule. It fires ``times`` times (None: no limit), each time with ``probability``."""

    kind: str
    endpoint: str
    namespace: str | None = None
    table: str | None = None
    times: int | None = 1
    probability: float = 1.0
    status: int = 500
    retry_after: int | None = 1
    polls: int = 2
    line_boundary: bool = False
    id: int = 0
    fired: int = 0

    def matches(self, endpoint: str, namespace: str | None, table: str | None) -> bool:
        return (
            self.endpoint in ("*", endpoint)
            and endpoint in KINDS[self.kind]
            and (self.namespace is None or self.namespace == namespace)
            and (self.table is None or self.table == table)
            and (self.times is None or self.fired < self.times)
        )


@dataclass
class FaultBook:
    """The active fault rules; :meth:`take` decides whether a request gets one."""

    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    next_id: int = 1

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def add(self, spec: dict) -> Fault:
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(KINDS)}")
        endpoint = spec.get("endpoint") or (KINDS[kind][0] if len(KINDS[kind]) == 1 else None)
        if endpoint is None or (endpoint != "*" and endpoint not in KINDS[kind]):
            raise ValueError(f"fault {kind} needs an endpoint among {KINDS[kind]}")
        allowed = set(Fault.__dataclass_fields__) - {"id", "fired"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        fault = Fault(**{**spec, "endpoint": endpoint, "id": self.next_id})
        self.next_id += 1
        self.faults.append(fault)
        return fault

    def take(self, endpoint: str, namespace: str | None = None, table: str | None = None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(endpoint, namespace, table) and self.random.random() < fault.probability:
                fault.fired += 1
                return fault
        return None

    def clear(self) -> None:
        self.faults.clear()

    def describe(self) -> list[dict]:
        return [asdict(f) for f in self.faults]
