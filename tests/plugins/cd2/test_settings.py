"""The [cd2] configuration options: defaults, and each value out of range refused naming it."""

from __future__ import annotations

import pytest

from cd2.settings import (
    DEFAULT_MAX_ACTIVE_TABLES,
    DEFAULT_SCHEDULE,
    DagSettings,
    SettingsError,
    read_settings,
)


@pytest.fixture(autouse=True)
def no_cd2_options(monkeypatch):
    for option in ("SCHEDULE", "MAX_ACTIVE_TABLES", "LOCK_WAIT_SECONDS"):
        monkeypatch.delenv(f"AIRFLOW__CD2__{option}", raising=False)


def test_unset_options_take_the_defaults():
    assert read_settings() == DagSettings()
    assert (DagSettings().schedule, DagSettings().max_active_tables) == (
        DEFAULT_SCHEDULE,
        DEFAULT_MAX_ACTIVE_TABLES,
    )


def test_options_are_read_from_the_configuration(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CD2__SCHEDULE", "@daily")
    monkeypatch.setenv("AIRFLOW__CD2__MAX_ACTIVE_TABLES", " 3 ")
    monkeypatch.setenv("AIRFLOW__CD2__LOCK_WAIT_SECONDS", "0")
    assert read_settings() == DagSettings(schedule="@daily", max_active_tables=3, lock_wait_seconds=0.0)


def test_an_empty_schedule_means_triggered_runs_only(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CD2__SCHEDULE", "")
    assert read_settings().schedule is None


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("max_active_tables", "0", "a whole number of at least 1"),
        ("max_active_tables", "-2", "a whole number of at least 1"),
        ("max_active_tables", "2.5", "a whole number of at least 1"),
        ("max_active_tables", "eight", "a whole number of at least 1"),
        ("lock_wait_seconds", "-1", "a number of at least 0"),
        ("lock_wait_seconds", "nan", "a number of at least 0"),
        ("lock_wait_seconds", "inf", "a number of at least 0"),
        ("lock_wait_seconds", "five minutes", "a number of at least 0"),
        ("schedule", "every 4 hours", "is not a cron expression or preset"),
        ("schedule", "61 * * * *", "is not a cron expression or preset"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_option_and_the_value(monkeypatch, option, value, says):
    monkeypatch.setenv(f"AIRFLOW__CD2__{option.upper()}", value)
    with pytest.raises(SettingsError) as refused:
        read_settings()
    assert f"[cd2] {option} = {value!r}" in str(refused.value)
    assert says in str(refused.value)
