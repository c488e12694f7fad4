"""Query jobs: what a data request asked for, frozen at creation, and the part files it produces."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field

from .encoding import format_timestamp
from .schema import TableDef
from .values import micros_to_datetime

JOB_LIFETIME = dt.timedelta(hours=24)


@dataclass
class Job:
    """A snapshot (``at``) or incremental (``since``/``until``) query over one table."""

    namespace: str
    table: TableDef
    format: str
    mode: str
    at: int | None = None
    since: int | None = None
    until: int | None = None
    parts: list = field(default_factory=list)  # (first, last) index ranges, or lists of indexes
    polls: int = 0  # non-terminal answers still to give
    failed: bool = False
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    expires_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC) + JOB_LIFETIME)
    created: float = field(default_factory=time.time)

    @property
    def incremental(self) -> bool:
        return self.since is not None

    def object_id(self, part: int) -> str:
        return f"{self.id}/part-{part:05d}"

    def status_body(self, status: str) -> dict:
        """The job as the API shows it in ``status`` (``waiting``, ``running``, ``complete``, ``failed``)."""
        body: dict = {"id": self.id, "status": status, "expires_at": format_timestamp(self.expires_at)}
        if status == "failed":
            body["error"] = {
                "type": "ProcessingError",
                "uuid": str(uuid.uuid4()),
                "message": f"Query job for table {self.namespace}.{self.table.name} failed (injected).",
            }
        elif status == "complete":
            body["objects"] = [{"id": self.object_id(i)} for i in range(len(self.parts))]
            body["schema_version"] = self.table.version
            if self.incremental:
                body["since"] = format_timestamp(micros_to_datetime(self.since))
                body["until"] = format_timestamp(micros_to_datetime(self.until))
            else:
                body["at"] = format_timestamp(micros_to_datetime(self.at))
        return body

    def next_answer(self, first: bool) -> tuple[int, dict]:
        """HTTP status and body for the creating POST (``first``) or a later GET."""
        if self.polls > 0:
            self.polls -= 1
            return 202, self.status_body("waiting" if first else "running")
        return 200, self.status_body("failed" if self.failed else "complete")
