"""The deployment's ``[cd2]`` Airflow configuration options, read when the DAG file is parsed.

They are configuration options, not a Variable, because the DAG file reads them at parse time without a
database or secrets call (MWAA sets them as the environment's configuration options). Each is checked
here: a value out of range fails the DAG's import, the error naming the option and the value, rather than
a DAG that parses and then never runs a table (Airflow never queues a task whose per-run limit is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airflow.configuration import conf
from airflow.sdk import CronTriggerTimetable

from cd2.contract import DEFAULT_LOCK_WAIT_SECONDS

SECTION = "cd2"
# DAP refreshes its data every 4 hours.
DEFAULT_SCHEDULE = "0 */4 * * *"
# Table tasks at once per run (each of sync and init); the API's rate is the pacer's, not this.
DEFAULT_MAX_ACTIVE_TABLES = 8


class SettingsError(ValueError):
    """A ``[cd2]`` configuration option is out of range; the message names the option and the value."""


@dataclass(frozen=True)
class DagSettings:
    """The ``[cd2]`` options: ``schedule`` (None: triggered runs only), ``max_active_tables`` (table
    tasks at once per run, each of sync and init), ``lock_wait_seconds`` (how long a table task waits
    for another run on its table, and a re-init's swap for readers)."""

    schedule: str | None = DEFAULT_SCHEDULE
    max_active_tables: int = DEFAULT_MAX_ACTIVE_TABLES
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS


def read_settings(section: str = SECTION) -> DagSettings:
    """The options of ``section``, each validated; raises :class:`SettingsError` naming a bad one."""
    schedule = _option(section, "schedule", DEFAULT_SCHEDULE).strip() or None
    if schedule is not None:
        try:
            CronTriggerTimetable(schedule, timezone="UTC").validate()
        except Exception as error:
            raise SettingsError(
                f"[{section}] schedule = {schedule!r} is not a cron expression or preset ({error}); "
                "leave it empty for triggered runs only"
            ) from None
    max_active = _option(section, "max_active_tables", str(DEFAULT_MAX_ACTIVE_TABLES))
    lock_wait = _option(section, "lock_wait_seconds", str(DEFAULT_LOCK_WAIT_SECONDS))
    return DagSettings(
        schedule=schedule,
        max_active_tables=int(_number(section, "max_active_tables", max_active, int, minimum=1)),
        lock_wait_seconds=_number(section, "lock_wait_seconds", lock_wait, float, minimum=0),
    )


def _option(section: str, key: str, default: str) -> str:
    return conf.get(section, key, fallback=default)


def _number(section: str, key: str, text: str, kind: type[int] | type[float], *, minimum: float) -> float:
    try:
        value = kind(text.strip())
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        noun = "a whole number" if kind is int else "a number"
        raise SettingsError(f"[{section}] {key} = {text!r} must be {noun} of at least {minimum:g}")
    return value
