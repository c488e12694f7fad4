"""cd2_config parsing and table selection: defaults, validation errors that name the culprit."""

from __future__ import annotations

import json

import pytest

from cd2.config import (
    Cd2Config,
    ConfigError,
    NotifySettings,
    parse_config,
    parse_flag_param,
    parse_table_param,
    select_tables,
    table_jobs,
)
from cd2.contract import DEFAULT_API_LIMITS, KEEP_EVERYTHING, NO_RETENTION, Action, TableJob

AVAILABLE = {"canvas": ["accounts", "courses", "users", "user_notes"], "catalog": ["courses"]}


def test_empty_or_missing_config_means_defaults():
    for raw in (None, "", "  ", "{}", {}):
        assert parse_config(raw) == Cd2Config(namespaces=("canvas",))


def test_config_keys_are_parsed():
    config = parse_config(
        '{"namespaces": ["canvas", "catalog"], "include": ["canvas.*"], "exclude": "user_*", '
        '"sns_topic_arn": "arn:aws:sns:us-east-1:123456789012:cd2", "api_limits": {"create_job": 10}}'
    )
    assert config == Cd2Config(
        namespaces=("canvas", "catalog"),
        include=("canvas.*",),
        exclude=("user_*",),
        sns_topic_arn="arn:aws:sns:us-east-1:123456789012:cd2",
        api_limits=tuple(sorted({**DEFAULT_API_LIMITS, "create_job": 10}.items())),
    )


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"namespace": ["canvas"]}', "'namespace'"),
        ('{"namespaces": ["canvas", "mastery"]}', "'mastery'"),
        ('{"namespaces": []}', "'namespaces' is empty"),
        ('{"include": [1]}', "'include'"),
        ('{"max_active_tables": 4}', "moved to the Airflow configuration option"),
        ('{"api_limits": {"create_jobs": 5}}', "'create_jobs'"),
        ('{"api_limits": {"create_job": 0}}', "'create_job'"),
        ('{"api_limit_window_seconds": true}', "'api_limit_window_seconds'"),
        ('{"rate_limited_wait_seconds": 0}', "'rate_limited_wait_seconds'"),
        ('{"sns_topic_arn": "my-topic"}', "'sns_topic_arn'"),
    ],
)
def test_bad_config_names_the_problem(raw, named):
    with pytest.raises(ConfigError, match="cd2_config") as error:
        parse_config(raw)
    assert named in str(error.value)


def test_table_param_accepts_list_or_comma_string():
    assert parse_table_param(["canvas.users", "accounts"], "tables") == ("canvas.users", "accounts")
    assert parse_table_param("users, accounts", "tables") == ("users", "accounts")
    assert parse_table_param([], "tables") == ()
    with pytest.raises(ConfigError, match="'force_reinit'"):
        parse_table_param([1], "force_reinit")


def test_select_applies_include_exclude_and_tables_param():
    assert select_tables(AVAILABLE) == [
        "canvas.accounts", "canvas.courses", "canvas.user_notes", "canvas.users", "catalog.courses",
    ]  # fmt: skip
    assert select_tables(AVAILABLE, include=["courses"]) == ["canvas.courses", "catalog.courses"]
    assert select_tables(AVAILABLE, include=["canvas.*"], exclude=["user*"]) == [
        "canvas.accounts",
        "canvas.courses",
    ]
    assert select_tables(AVAILABLE, exclude=["catalog.*"], requested=["users", "canvas.acc*"]) == [
        "canvas.accounts",
        "canvas.users",
    ]


@pytest.mark.parametrize(
    ("include", "requested", "named"),
    [
        (["nosuch"], [], "cd2_config 'include': 'nosuch' matches no table"),
        ([], ["canvas.nosuch"], "param 'tables': 'canvas.nosuch' matches no table"),
        ([], ["new_quizzes.quizzes"], "namespace 'new_quizzes', which is not configured"),
    ],
)
def test_entries_matching_nothing_fail_naming_them(include, requested, named):
    with pytest.raises(ConfigError) as error:
        select_tables(AVAILABLE, include=include, requested=requested)
    assert named in str(error.value)


def test_freshness_hours_a_default_and_per_table_overrides():
    assert parse_config({}).freshness.hours_for("canvas.users") == 12.0
    assert parse_config({"freshness_hours": 6}).freshness.hours_for("canvas.users") == 6.0
    freshness = parse_config(
        {"freshness_hours": {"default": 8, "canvas.web_logs": 48, "catalog.*": 72}}
    ).freshness
    assert [freshness.hours_for(t) for t in ("canvas.users", "canvas.web_logs", "catalog.x")] == [8, 48, 72]


@pytest.mark.parametrize("value", [0, -1, True, "12", {"default": 0}, {"canvas.users": "x"}])
def test_bad_freshness_hours_names_the_key(value):
    with pytest.raises(ConfigError, match="freshness_hours"):
        parse_config({"freshness_hours": value})


def test_retention_hours_override_the_published_retention():
    assert parse_config({}).retention.hours_for("canvas_logs.web_logs") == 30 * 24
    assert parse_config({}).retention.hours_for("canvas.users") == NO_RETENTION
    retention = parse_config({"retention_hours": {"canvas_logs.web_logs": 48, "canvas.*": 6}}).retention
    assert [retention.hours_for(t) for t in ("canvas_logs.web_logs", "canvas.users")] == [48, 6]


@pytest.mark.parametrize("value", [12, {"canvas.users": 0}, {"canvas.users": "x"}, {"": 1}])
def test_bad_retention_hours_names_the_key(value):
    with pytest.raises(ConfigError, match="retention_hours"):
        parse_config({"retention_hours": value})


def test_keep_days_bound_the_tables_their_patterns_match_first_and_keep_everything_elsewhere():
    assert parse_config({}).keep_days.days_for("canvas_logs.web_logs") == KEEP_EVERYTHING
    keep = parse_config({"keep_days": {"canvas_logs.web_logs": 400, "canvas_logs.*": 90.5}}).keep_days
    days = [keep.days_for(t) for t in ("canvas_logs.web_logs", "canvas_logs.other", "canvas.users")]
    assert days == [400, 90.5, KEEP_EVERYTHING]


@pytest.mark.parametrize(
    "value", [30, [30], {"canvas_logs.web_logs": 0}, {"canvas_logs.*": -1}, {"x.y": True}, {"": 30}]
)
def test_bad_keep_days_names_the_key(value):
    with pytest.raises(ConfigError, match="'keep_days'"):
        parse_config({"keep_days": value})


def test_flag_param_is_a_boolean_or_its_text():
    assert parse_flag_param(True, "plan") is True
    assert parse_flag_param("false", "plan") is False and parse_flag_param("True", "plan") is True
    with pytest.raises(ConfigError, match="'plan'"):
        parse_flag_param("yes please", "plan")


def test_each_table_gets_its_own_job_with_its_settings_and_the_job_survives_xcom():
    config = parse_config(
        {
            "api_limits": {"create_job": 10},
            "retention_hours": {"canvas.users": 48},
            "keep_days": {"canvas_logs.*": 400},
            "rate_limited_wait_seconds": 60,
        }
    )
    labels = ["canvas.accounts", "canvas.users", "canvas_logs.web_logs"]
    jobs = table_jobs(config, labels, holder="cd2_replica run_1", lock_wait_seconds=5, force_reinit=["users"])
    assert list(jobs) == labels
    users, logs = jobs["canvas.users"], jobs["canvas_logs.web_logs"]
    assert (users.action, users.namespace, users.table, users.reinit) == (
        Action.SYNC,
        "canvas",
        "users",
        True,
    )
    assert (users.retention_hours, users.keep_days) == (48.0, KEEP_EVERYTHING)
    assert (logs.retention_hours, logs.keep_days, logs.reinit) == (30 * 24.0, 400.0, False)
    assert jobs["canvas.accounts"].retention_hours == NO_RETENTION
    assert all(j.holder == "cd2_replica run_1" and j.lock_wait_seconds == 5 for j in jobs.values())
    assert all(
        j.api_limits == config.api_limits_argv and j.rate_limited_wait_seconds == 60 for j in jobs.values()
    )
    for job in jobs.values():
        assert TableJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    planned = table_jobs(config, labels, holder="h", lock_wait_seconds=5, force_reinit=["users"], plan=True)
    assert {j.action for j in planned.values()} == {Action.PLAN}
    assert planned["canvas.users"].reinit and not planned["canvas.accounts"].reinit


def test_the_notification_settings_survive_xcom():
    config = parse_config(
        {"sns_topic_arn": "arn:aws:sns:us-east-1:1:t", "freshness_hours": {"default": 6, "x": 2}}
    )
    settings = NotifySettings(config.sns_topic_arn, config.freshness, plan=True, problem="p")
    assert NotifySettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
