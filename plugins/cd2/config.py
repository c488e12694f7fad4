"""The ``cd2_config`` Airflow Variable and table selection, with errors that name what is wrong."""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cd2.contract import (
    DEFAULT_API_LIMIT_WINDOW_SECONDS,
    DEFAULT_API_LIMITS,
    DEFAULT_RATE_LIMITED_WAIT_SECONDS,
    KEEP_EVERYTHING,
    NO_RETENTION,
    Action,
    ApiEndpoint,
    TableJob,
    TableRef,
    format_api_limits,
)
from cd2.dag_names import CONFIG_VARIABLE

logger = logging.getLogger(__name__)

# A table whose watermark is older than this is stale (DAP refreshes every 4 hours: three missed refreshes).
DEFAULT_FRESHNESS_HOURS = 12.0
# How far back the API serves a table's incremental queries, where Instructure publishes it (hours; an
# older watermark needs a fresh snapshot). cd2_config 'retention_hours' adds or overrides tables.
DEFAULT_RETENTION_HOURS: dict[str, float] = {"canvas_logs.web_logs": 30 * 24.0}

# Namespaces the DAP client 2.3.1 can replicate (it ships a model module for each).
KNOWN_NAMESPACES = ("canvas", "canvas_logs", "catalog", "new_quizzes")
DEFAULT_NAMESPACES = ("canvas",)


class ConfigError(ValueError):
    """The ``cd2_config`` Variable or a run parameter is invalid; the message says which key and why."""


@dataclass(frozen=True)
class Freshness:
    """How old a table's watermark may be before the table is *stale*: a default, per-table overrides.

    ``overrides`` are ``(pattern, hours)`` pairs (``ns.table`` or ``table``, globs allowed); the first
    that matches a table wins.
    """

    default_hours: float = DEFAULT_FRESHNESS_HOURS
    overrides: tuple[tuple[str, float], ...] = ()

    def hours_for(self, label: str) -> float:
        return _first_match(self.overrides, label, self.default_hours)


@dataclass(frozen=True)
class Retention:
    """How far back the API serves a table's incremental queries: ``overrides`` (``(pattern, hours)``,
    first match wins) over the published :data:`DEFAULT_RETENTION_HOURS`."""

    overrides: tuple[tuple[str, float], ...] = ()

    def hours_for(self, label: str) -> float:
        """The table's retention in hours; ``NO_RETENTION`` when none is known."""
        return _first_match((*self.overrides, *DEFAULT_RETENTION_HOURS.items()), label, NO_RETENTION)


@dataclass(frozen=True)
class KeepDays:
    """How many days of a log table's rows the replica keeps, counted back from its watermark:
    ``overrides`` (``(pattern, days)``, first match wins); ``KEEP_EVERYTHING`` for the other tables."""

    overrides: tuple[tuple[str, float], ...] = ()

    def days_for(self, label: str) -> float:
        return _first_match(self.overrides, label, KEEP_EVERYTHING)


def _first_match(overrides: Sequence[tuple[str, float]], label: str, default: float) -> float:
    ref = TableRef.parse(label)
    return next((value for pattern, value in overrides if matches(pattern, ref.namespace, ref.name)), default)


@dataclass(frozen=True)
class Cd2Config:
    """The parsed ``cd2_config`` Variable; every key is optional."""

    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sns_topic_arn: str | None = None
    freshness: Freshness = Freshness()
    retention: Retention = Retention()
    keep_days: KeepDays = KeepDays()
    # Calls per window per endpoint (schools can get raised limits); see cd2.contract.DEFAULT_API_LIMITS.
    api_limits: tuple[tuple[str, int], ...] = tuple(sorted(DEFAULT_API_LIMITS.items()))
    api_limit_window_seconds: float = DEFAULT_API_LIMIT_WINDOW_SECONDS
    rate_limited_wait_seconds: float = DEFAULT_RATE_LIMITED_WAIT_SECONDS

    @property
    def api_limits_argv(self) -> str:
        """The limits in the child job's argv form."""
        return format_api_limits(dict(self.api_limits))


_KEYS = (
    "namespaces",
    "include",
    "exclude",
    "sns_topic_arn",
    "freshness_hours",
    "retention_hours",
    "api_limits",
    "api_limit_window_seconds",
    "rate_limited_wait_seconds",
    "keep_days",
)
# Keys that moved elsewhere, with where they went.
_MOVED = {
    "max_active_tables": "the Airflow configuration option [cd2] max_active_tables (the API's rate is "
    "paced by 'api_limits')",
}


def parse_config(raw: str | Mapping[str, Any] | None, variable: str = CONFIG_VARIABLE) -> Cd2Config:
    """Parse the Variable's value (JSON text or an already decoded object); empty means all defaults.
    Errors name ``variable`` (an instance's Variable: :mod:`cd2.instances`)."""
    logger.info("Parsing the Variable %s", variable)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return Cd2Config()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ConfigError(f"Variable {variable} is not valid JSON: {error}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"Variable {variable} must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_KEYS) - set(_MOVED))
    if unknown:
        raise ConfigError(f"Variable {variable} has unknown key(s) {unknown}; known keys: {list(_KEYS)}")
    try:
        return _parse_keys(raw)
    except ConfigError as error:
        raise ConfigError(f"Variable {variable}: {error}") from None


def _parse_keys(raw: Mapping[str, Any]) -> Cd2Config:
    for key in sorted(set(raw) & set(_MOVED)):
        raise ConfigError(f"{key!r} moved to {_MOVED[key]}; remove it here")
    namespaces = _string_list(raw, "namespaces", default=DEFAULT_NAMESPACES)
    if not namespaces:
        raise ConfigError("'namespaces' is empty; name at least one namespace")
    for namespace in namespaces:
        if namespace not in KNOWN_NAMESPACES:
            raise ConfigError(
                f"unknown namespace {namespace!r} in 'namespaces'; known namespaces: {list(KNOWN_NAMESPACES)}"
            )

    topic = raw.get("sns_topic_arn")
    if topic is not None and (not isinstance(topic, str) or not topic.startswith("arn:")):
        raise ConfigError(f"'sns_topic_arn' must be an SNS topic ARN, got {topic!r}")

    limits = dict(DEFAULT_API_LIMITS)
    given = raw.get("api_limits", {})
    if not isinstance(given, Mapping):
        raise ConfigError(f"'api_limits' must be an object, got {given!r}")
    for name, count in given.items():
        if name not in set(ApiEndpoint):
            raise ConfigError(
                f"unknown endpoint {name!r} in 'api_limits'; known: {list(map(str, ApiEndpoint))}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"'api_limits' {name!r} must be a positive integer, got {count!r}")
        limits[name] = count
    window = _seconds(raw, "api_limit_window_seconds", DEFAULT_API_LIMIT_WINDOW_SECONDS)

    return Cd2Config(
        namespaces=namespaces,
        include=_string_list(raw, "include"),
        exclude=_string_list(raw, "exclude"),
        sns_topic_arn=topic or None,
        freshness=_freshness(raw.get("freshness_hours")),
        retention=Retention(_per_table(raw.get("retention_hours"), "retention_hours", "hours")),
        keep_days=KeepDays(_per_table(raw.get("keep_days"), "keep_days", "days")),
        api_limits=tuple(sorted(limits.items())),
        api_limit_window_seconds=window,
        rate_limited_wait_seconds=_seconds(
            raw, "rate_limited_wait_seconds", DEFAULT_RATE_LIMITED_WAIT_SECONDS
        ),
    )


def _seconds(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key!r} must be a positive number of seconds, got {value!r}")
    return float(value)


def _positive(value: Any, where: str, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where} must be a positive number of {unit}, got {value!r}")
    return float(value)


def _hours(value: Any, where: str) -> float:
    return _positive(value, where, "hours")


def _freshness(value: Any) -> Freshness:
    """``12`` or ``{"default": 12, "canvas.web_logs": 48, "catalog.*": 72}`` (every key optional)."""
    if value is None:
        return Freshness()
    if not isinstance(value, Mapping):
        return Freshness(default_hours=_hours(value, "'freshness_hours'"))
    default = _hours(value.get("default", DEFAULT_FRESHNESS_HOURS), "'freshness_hours' 'default'")
    overrides = []
    for pattern, hours in value.items():
        if pattern == "default":
            continue
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"'freshness_hours' key {pattern!r} is not a table name")
        overrides.append((pattern, _hours(hours, f"'freshness_hours' {pattern!r}")))
    return Freshness(default_hours=default, overrides=tuple(overrides))


def _per_table(value: Any, key: str, unit: str) -> tuple[tuple[str, float], ...]:
    """``{"canvas_logs.web_logs": 720, "catalog.*": 48}``: a positive number per table pattern."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key!r} must be an object, got {value!r}")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{key!r} key {pattern!r} is not a table name")
    return tuple((p, _positive(v, f"{key!r} {p!r}", unit)) for p, v in value.items())


def table_jobs(
    config: Cd2Config,
    labels: Sequence[str],
    *,
    holder: str,
    lock_wait_seconds: float,
    force_reinit: Sequence[str] = (),
    plan: bool = False,
) -> dict[str, TableJob]:
    """Each table's job for a run, by label: a sync (a plan in a plan run) with the table's settings,
    ``reinit`` where ``force_reinit`` names the table. The init task turns it into an init."""
    jobs = {}
    for label in labels:
        ref = TableRef.parse(label)
        jobs[label] = TableJob(
            action=Action.PLAN if plan else Action.SYNC,
            namespace=ref.namespace,
            table=ref.name,
            holder=holder,
            lock_wait_seconds=lock_wait_seconds,
            api_limits=config.api_limits_argv,
            api_limit_window_seconds=config.api_limit_window_seconds,
            rate_limited_wait_seconds=config.rate_limited_wait_seconds,
            reinit=any(matches(pattern, ref.namespace, ref.name) for pattern in force_reinit),
            retention_hours=config.retention.hours_for(label),
            keep_days=config.keep_days.days_for(label),
        )
    return jobs


@dataclass(frozen=True)
class NotifySettings:
    """What the notification needs of the run's configuration, as ``list_tables`` read it: the topic,
    the freshness bounds, whether it is a plan run, and the configuration error that failed the run."""

    sns_topic_arn: str | None = None
    freshness: Freshness = Freshness()
    plan: bool = False
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NotifySettings:
        freshness = data["freshness"]
        return cls(
            sns_topic_arn=data["sns_topic_arn"],
            freshness=Freshness(freshness["default_hours"], tuple((p, h) for p, h in freshness["overrides"])),
            plan=data["plan"],
            problem=data["problem"],
        )


def parse_flag_param(value: Any, name: str) -> bool:
    """A boolean run parameter (rendered natively, or as the text ``true``/``false``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        return value.strip().lower() == "true"
    raise ConfigError(f"Param {name!r} must be true or false, got {value!r}")


def parse_table_param(value: Any, name: str) -> tuple[str, ...]:
    """A run parameter holding table names: a list of strings, a comma-separated string, or empty."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [part for part in (piece.strip() for piece in value.split(",")) if part]
    if not isinstance(value, Sequence) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"Param {name!r} must be a list of table names, got {value!r}")
    return tuple(value)


def _string_list(raw: Mapping[str, Any], key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{key!r} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def matches(pattern: str, namespace: str, table: str) -> bool:
    """Whether ``pattern`` (``ns.table`` or ``table``, glob allowed) names this table."""
    if "." in pattern:
        return fnmatch.fnmatchcase(TableRef(namespace, table).label, pattern)
    return fnmatch.fnmatchcase(table, pattern)


def select_tables(
    available: Mapping[str, Sequence[str]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    requested: Sequence[str] = (),
) -> list[str]:
    """Labels of the tables to replicate, sorted; raises :class:`ConfigError` naming any entry of
    ``include`` or ``requested`` (the ``tables`` param) that matches no table."""
    everything = [(ns, table) for ns in available for table in available[ns]]
    for source, patterns in (("cd2_config 'include'", include), ("param 'tables'", requested)):
        for pattern in patterns:
            if "." in pattern:
                namespace = pattern.partition(".")[0]
                if namespace not in available:
                    raise ConfigError(
                        f"{source}: {pattern!r} names namespace {namespace!r}, which is not configured; "
                        f"configured namespaces: {sorted(available)}"
                    )
            if not any(matches(pattern, ns, table) for ns, table in everything):
                raise ConfigError(
                    f"{source}: {pattern!r} matches no table in namespace(s) {sorted(available)}"
                )

    chosen = [
        (ns, table)
        for ns, table in everything
        if (not include or any(matches(p, ns, table) for p in include))
        and not any(matches(p, ns, table) for p in exclude)
        and (not requested or any(matches(p, ns, table) for p in requested))
    ]
    return sorted(TableRef(ns, table).label for ns, table in chosen)
