"""The one contract between the Airflow side and the DAP child process, imported by both.

A *job* says what the child is to do (:class:`ListJob`, :class:`TableJob`); it travels as the child's
argv (:meth:`to_argv` / :func:`job_from_argv`), which holds nothing secret. A *result* says what it did
(:class:`ListResult`, :class:`TableResult`); it travels as one JSON line on a pipe and is decoded
strictly: a field one side has and the other has not is a :class:`ContractError`, never a silent gap.
The table task's XCom is the same :class:`TableResult`, so every status word and default is defined here.

Standard library only: the child runs in the DAP virtualenv, where Airflow is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Self

# Environment variables the child reads (secrets travel only this way, never in argv).
ENV_API_URL = "DAP_API_URL"
ENV_CLIENT_ID = "DAP_CLIENT_ID"
ENV_CLIENT_SECRET = "DAP_CLIENT_SECRET"
ENV_DATABASE_URL = "CD2_DATABASE_URL"
# The database keeping the API budget, when not the target (several instances share the first's).
ENV_BUDGET_DATABASE_URL = "CD2_BUDGET_DATABASE_URL"
# File descriptor number the child writes its one JSON result line to.
ENV_RESULT_FD = "CD2_RESULT_FD"

DEFAULT_HOLDER = "cd2_replica"
DEFAULT_LOCK_WAIT_SECONDS = 300.0
# A TableJob's retention_hours when no retention is known for the table.
NO_RETENTION = 0.0
# A TableJob's keep_days when the replica keeps every row (cd2_config 'keep_days' bounds log tables).
KEEP_EVERYTHING = 0.0
# The PostgreSQL schema of the product's own state in the target database.
PRODUCT_SCHEMA = "cd2_replica"
# Namespaces whose tables only grow and which Instructure serves for 30 days: a re-init keeps the rows
# the API no longer has, and 'keep_days' bounds them, by the age in TIME_COLUMN.
APPEND_ONLY_NAMESPACES = ("canvas_logs",)
TIME_COLUMN = "timestamp"


class ApiEndpoint(StrEnum):
    """The DAP API endpoints with a published rate limit."""

    CREATE_JOB = "create_job"
    LIST_TABLES = "list_tables"
    GET_JOB = "get_job"
    SCHEMA = "schema"
    OBJECT_URLS = "object_urls"


# Calls per window (Instructure's published limits per client id, each endpoint on its own); cd2_config
# 'api_limits' overrides them, 'api_limit_window_seconds' the window (only the local emulator shortens it).
DEFAULT_API_LIMITS: dict[str, int] = {
    ApiEndpoint.CREATE_JOB: 5,
    ApiEndpoint.LIST_TABLES: 5,
    ApiEndpoint.GET_JOB: 500,
    ApiEndpoint.SCHEMA: 500,
    ApiEndpoint.OBJECT_URLS: 200,
}
DEFAULT_API_LIMIT_WINDOW_SECONDS = 60.0
# How long one call may keep waiting out 429 responses (each Retry-After honoured) before it fails as
# rate_limited; cd2_config 'rate_limited_wait_seconds' overrides it.
DEFAULT_RATE_LIMITED_WAIT_SECONDS = 900.0


def format_api_limits(limits: dict[str, int]) -> str:
    """``{"create_job": 5, ...}`` -> ``"create_job=5,..."`` (the argv form)."""
    return ",".join(f"{ApiEndpoint(name)}={int(count)}" for name, count in sorted(limits.items()))


def parse_api_limits(text: str) -> dict[str, int]:
    """The inverse of :func:`format_api_limits`, over the defaults (empty text: the defaults)."""
    limits = dict(DEFAULT_API_LIMITS)
    for item in filter(None, text.split(",")):
        name, _, count = item.partition("=")
        try:
            limits[ApiEndpoint(name)] = int(count)
        except ValueError:
            raise ContractError(f"API limit {item!r} is not endpoint=calls") from None
    return limits


class ContractError(ValueError):
    """A job or result does not have the contract's shape (the two sides disagree on a field)."""


class Action(StrEnum):
    """What the child is asked to do."""

    LIST = "list"
    SYNC = "sync"
    INIT = "init"
    PLAN = "plan"  # say what a sync/init would do, changing nothing and creating no job


class Outcome(StrEnum):
    """What happened to a table: in a child's result, a task's XCom and the notification."""

    SYNCED = "synced"
    INITIALIZED = "initialized"
    INIT_NEEDED = "init_needed"
    FAILED = "failed"
    SKIPPED = "skipped"
    BUSY = "busy"  # another run holds the table: not a failure
    PLANNED = "planned"  # a plan run: nothing changed; the record's ``plan`` says what a run would do


class PlannedAction(StrEnum):
    """What a run would do to a table, as a plan run reports it."""

    INIT = "init"
    REINIT = "reinit"
    SYNC = "sync"
    NOTHING = "nothing"


class ErrorCategory(StrEnum):
    """Why a table failed, with what every consumer does about it, defined here and nowhere else.

    Like :class:`http.HTTPStatus`, each member carries its behaviour, so a category cannot exist
    without it:

    - ``retries``: the Airflow retries a failure of this category gets (``None``: the task's own
      ``retries``). While one is left the operator raises ``AirflowException`` (Airflow retries),
      after that ``AirflowFailException`` (the task fails at once); see :meth:`may_retry`.
    - ``title``: how the notification and the status page name it ("failed (unforeseen): ...").
    - ``action``: what a person does when the table still failed; the notification and the status
      page say it, and the child ends an unforeseen error's message with it.
    """

    retries: int | None
    title: str
    action: str

    def __new__(cls, value: str, retries: int | None, title: str, action: str) -> ErrorCategory:
        member = str.__new__(cls, value)
        member._value_ = value
        member.retries = retries
        member.title = title
        member.action = action
        return member

    TRANSIENT = (
        "transient",
        None,
        "transient",
        "Airflow's retries did not get past it: if the next run fails the same way, look at the DAP API's "
        "status and the network, then clear this table's table.sync (with downstream)",
    )
    PERMANENT = (
        "permanent",
        0,
        "permanent",
        "fix what the error names, then clear this table's table.sync (with downstream)",
    )
    UNKNOWN = (
        "unknown",
        1,
        "unforeseen",
        "read the traceback in the task log of this table's table.sync or table.init and report it (the "
        "product does not recognize this error); clear table.sync (with downstream) to try again",
    )
    # The API kept answering 429 for longer than the child waits: another consumer of the same
    # credentials is using the budget. A retry may help later; it is not a fault of this product.
    RATE_LIMITED = (
        "rate_limited",
        None,
        "rate limited",
        "another consumer of the same DAP client id (a dap CLI on cron, another deployment) kept the API's "
        "budget spent: stop it or give it a client id of its own; the next run catches up, or clear this "
        "table's table.sync (with downstream)",
    )

    def may_retry(self, try_number: int) -> bool:
        """Whether Airflow may retry a failure of this category on try ``try_number`` (1 is the first)."""
        return self.retries is None or try_number <= self.retries

    @property
    def retried(self) -> str:
        """The retries in words: "retried as often as the task allows", "not retried", "retried once"."""
        if self.retries is None:
            return "retried as often as the task allows"
        return {0: "not retried", 1: "retried once"}.get(self.retries, f"retried {self.retries} times")


@dataclass(frozen=True)
class TableRef:
    """A table of a namespace; its ``label`` (``namespace.table``) names it in the UI and messages."""

    namespace: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.namespace}.{self.name}"

    @classmethod
    def parse(cls, label: str) -> TableRef:
        """``"canvas.accounts"`` -> ``TableRef("canvas", "accounts")``."""
        namespace, dot, name = label.partition(".")
        if not dot or not namespace or not name:
            raise ContractError(f"Table {label!r} is not of the form namespace.table")
        return cls(namespace, name)


# -- the strict JSON form of jobs and results ------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# The checks of the plain annotations the records use (a decoded JSON value against each).
_PLAIN_TYPES: dict[str, Callable[[Any], bool]] = {
    "None": lambda value: value is None,
    "str": lambda value: isinstance(value, str),
    "bool": lambda value: isinstance(value, bool),
    "int": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "float": _is_number,
    "list[str]": _is_str_list,
    "dict[str, list[str]]": lambda value: (
        isinstance(value, dict)
        and all(isinstance(key, str) and _is_str_list(items) for key, items in value.items())
    ),
}


def _fits(annotation: str, value: Any) -> bool:
    """Whether a decoded JSON value fits a field's annotation (enums and nested records are checked by
    their own decoding)."""
    return any(_PLAIN_TYPES.get(option, lambda _: True)(value) for option in annotation.split(" | "))


class _Record:
    """Strict JSON form: exactly the dataclass's fields, each of its annotated type, nested records
    decoded too."""

    _nested: ClassVar[dict[str, type[_Record]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise ContractError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        names = {field.name for field in fields(cls)}  # type: ignore[arg-type]
        required = {f.name for f in fields(cls) if f.default is MISSING}  # type: ignore[arg-type]
        unknown, missing = set(data) - names, required - set(data)
        if unknown or missing:
            raise ContractError(
                f"{cls.__name__}: unknown field(s) {sorted(unknown)}, missing field(s) {sorted(missing)}"
            )
        for field in fields(cls):  # type: ignore[arg-type]
            if field.name in data and not _fits(field.type, data[field.name]):
                raise ContractError(
                    f"{cls.__name__}: field {field.name!r} must be {field.type}, got {data[field.name]!r:.100}"
                )
        values = dict(data)
        for name, record in cls._nested.items():
            if values.get(name) is not None:
                values[name] = record.from_dict(values[name])
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ContractError(f"{cls.__name__}: {error}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ContractError(f"{cls.__name__}: not JSON: {error}") from None
        return cls.from_dict(data)


# -- jobs ---------------------------------------------------------------------------------------------


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Job:
    """Argv form of a job: the action, then ``--field value`` per field (``--flag`` for a true boolean)."""

    action: Action

    def to_argv(self) -> list[str]:
        argv = [str(self.action)]
        for field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.name == "action" or value is False:
                continue
            if value is True:
                argv.append(_option(field.name))
            elif isinstance(value, tuple):
                for item in value:
                    argv += [_option(field.name), str(item)]
            else:
                argv += [_option(field.name), str(value)]
        return argv

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One option per field, typed from the field's annotation."""
        for field in fields(cls):  # type: ignore[arg-type]
            if field.name == "action":
                continue
            required = field.default is MISSING
            if field.type == "bool":
                parser.add_argument(_option(field.name), dest=field.name, action="store_true")
            elif field.type.startswith("tuple"):
                parser.add_argument(_option(field.name), dest=field.name, action="append", required=required)
            else:
                parser.add_argument(
                    _option(field.name),
                    dest=field.name,
                    type={"int": int, "float": float}.get(field.type, str),
                    required=required,
                    default=None if required else field.default,
                )


@dataclass(frozen=True)
class ListJob(_Job):
    """List the tables of these namespaces."""

    namespace: tuple[str, ...]
    api_limits: str = ""
    api_limit_window_seconds: float = DEFAULT_API_LIMIT_WINDOW_SECONDS
    rate_limited_wait_seconds: float = DEFAULT_RATE_LIMITED_WAIT_SECONDS
    action: Action = Action.LIST


TABLE_ACTIONS = (Action.SYNC, Action.INIT, Action.PLAN)


@dataclass(frozen=True)
class TableJob(_Job, _Record):
    """Sync, init or plan one table (sync and init hold its lock). Its JSON form (:class:`_Record`) is
    what ``list_tables`` hands each table task.

    ``holder`` names the run to other sessions waiting for the table; ``reinit`` (init) replaces an
    initialized table, (plan) says the table is named in ``force_reinit``; ``retention_hours`` (plan)
    is how far back the API serves the table's incremental queries (``NO_RETENTION``: no known limit);
    ``keep_days`` (sync) bounds a log table's rows, counted back from its watermark (``KEEP_EVERYTHING``).
    """

    action: Action
    namespace: str
    table: str
    holder: str = DEFAULT_HOLDER
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS
    api_limits: str = ""
    api_limit_window_seconds: float = DEFAULT_API_LIMIT_WINDOW_SECONDS
    rate_limited_wait_seconds: float = DEFAULT_RATE_LIMITED_WAIT_SECONDS
    reinit: bool = False
    retention_hours: float = NO_RETENTION
    keep_days: float = KEEP_EVERYTHING

    def __post_init__(self) -> None:
        if self.action not in TABLE_ACTIONS:
            raise ContractError(f"a table job's action is sync, init or plan, not {self.action!r}")
        object.__setattr__(self, "action", Action(self.action))

    @property
    def ref(self) -> TableRef:
        return TableRef(self.namespace, self.table)


def job_from_argv(argv: list[str]) -> ListJob | TableJob:
    """The job a child was started for: the inverse of ``job.to_argv()``."""
    parser = argparse.ArgumentParser(prog="python -m cd2.dap_child", description="Run one DAP client job.")
    actions = parser.add_subparsers(dest="action", required=True)
    ListJob.add_arguments(actions.add_parser(Action.LIST, help="list the tables of namespaces"))
    for action in TABLE_ACTIONS:
        TableJob.add_arguments(actions.add_parser(action, help=f"{action} one table"))
    values = vars(parser.parse_args(argv))
    action = Action(values.pop("action"))
    if action is Action.LIST:
        return ListJob(**(values | {"namespace": tuple(values["namespace"])}))
    return TableJob(action=action, **values)


# -- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildError(_Record):
    """Why a job failed: its category, the underlying exception's type, and what to do."""

    category: ErrorCategory
    type: str
    message: str
    sqlstate: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", ErrorCategory(self.category))


@dataclass(frozen=True)
class ListResult(_Record):
    """The tables of each namespace, as the API lists them; or why listing failed."""

    tables: dict[str, list[str]]
    error: ChildError | None = None
    peak_rss_mb: float | None = None

    _nested: ClassVar[dict[str, type[_Record]]] = {"error": ChildError}


@dataclass(frozen=True)
class TablePlan(_Record):
    """What a run would do to one table and why, with the replica's row count and both schema versions
    (the table's watermark is its :class:`TableResult`'s ``watermark_before``)."""

    action: PlannedAction
    reason: str
    rows: int | None = None  # in the replica now (None: no table)
    local_schema_version: int | None = None
    api_schema_version: int | None = None
    rows_kept: int | None = None  # a re-init of a log table would keep about these rows the API forgot

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", PlannedAction(self.action))


@dataclass(frozen=True)
class TableResult(_Record):
    """What one table task did (``label`` is ``namespace.table``): the child's result, the task's XCom.

    ``outcome`` is ``init_needed`` when a sync found the table uninitialized (``reinit`` when an
    initialized table must be replaced), ``failed`` with ``error`` set, ``skipped`` for an init that
    had nothing to do, ``planned`` (with ``plan`` set) for a plan job. ``rows_kept``: a log table's
    re-init kept these rows of the previous copy, which the API no longer serves; ``rows_pruned``: a
    sync deleted these rows older than ``keep_days``.
    """

    label: str
    outcome: Outcome
    reason: str | None = None
    reinit: bool = False
    rows: int | None = None
    duration_seconds: float | None = None
    watermark_before: str | None = None
    watermark_after: str | None = None
    schema_version: int | None = None
    peak_rss_mb: float | None = None
    error: ChildError | None = None
    # Views on the table that could not be recreated (kept as text in cd2_replica.saved_views).
    views_needing_person: list[str] | None = None
    server_warning: str | None = None  # the target server is older than Instructure supports
    plan: TablePlan | None = None
    rows_kept: int | None = None
    rows_pruned: int | None = None
    # The child's patches of the DAP client that were active (cd2.dap_child.patches), by name.
    patches: list[str] | None = None

    _nested: ClassVar[dict[str, type[_Record]]] = {"error": ChildError, "plan": TablePlan}

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))
