"""The deployment's ``[cd2]`` Airflow configuration options, read when the DAG file is parsed.

They are configuration options, not a Variable, because the DAG file reads them at parse time without a
database or secrets call (MWAA sets them as the environment's configuration options). Each is checked
here: a value out of range fails the DAG's import, the error naming the option and the value, rather than
a DAG that parses and then never runs a table (Airflow never queues a task whose per-run limit is 0).
"""

from __future__ import annotations

import math
import os
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


OPTIONS = ("schedule", "max_active_tables", "lock_wait_seconds")


def read_settings(section: str = SECTION, *, fallback: str | None = None) -> DagSettings:
    """The options of ``section`` (an option it does not set: ``fallback``'s), each validated; raises
    :class:`SettingsError` naming a bad one, or an option ``section`` has that is not one of these."""
    if fallback is not None:
        unknown = sorted(_options_set(section) - set(OPTIONS))
        if unknown:
            raise SettingsError(f"[{section}] has unknown option(s) {unknown}; known: {list(OPTIONS)}")

    def option(key: str, default: str) -> tuple[str, str]:
        """(the section that sets it, its text)"""
        where = fallback if fallback is not None and not conf.has_option(section, key) else section
        return where, conf.get(where, key, fallback=default)

    where, text = option("schedule", DEFAULT_SCHEDULE)
    schedule = text.strip() or None
    if schedule is not None:
        try:
            CronTriggerTimetable(schedule, timezone="UTC").validate()
        except Exception as error:
            raise SettingsError(
                f"[{where}] schedule = {schedule!r} is not a cron expression or preset ({error}); "
                "leave it empty for triggered runs only"
            ) from None
    return DagSettings(
        schedule=schedule,
        max_active_tables=int(
            _number(*option("max_active_tables", str(DEFAULT_MAX_ACTIVE_TABLES)), "max_active_tables", int, 1)
        ),
        lock_wait_seconds=_number(
            *option("lock_wait_seconds", str(DEFAULT_LOCK_WAIT_SECONDS)), "lock_wait_seconds", float, 0
        ),
    )


def _number(section: str, text: str, key: str, kind: type[int] | type[float], minimum: float) -> float:
    try:
        value = kind(text.strip())
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        noun = "a whole number" if kind is int else "a number"
        raise SettingsError(f"[{section}] {key} = {text!r} must be {noun} of at least {minimum:g}")
    return value


def _options_set(section: str) -> set[str]:
    """The options ``section`` sets, in a configuration file or as ``AIRFLOW__SECTION__KEY`` variables
    (which Airflow's ``getsection`` does not list for a section no file has)."""
    prefix = f"AIRFLOW__{section.upper()}__"
    from_env = {
        name[len(prefix) :].lower().removesuffix("_cmd").removesuffix("_secret")
        for name in os.environ
        if name.startswith(prefix)
    }
    return set(conf.getsection(section) or {}) | from_env
