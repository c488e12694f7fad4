"""Built-in table definitions, written by us from Instructure's published ERD and dataset pages.

They carry the shapes the real API serves: ``__dap_unspecified__`` enum members, the
``oneOf [const "__dap_oversized_truncated__", string]`` marker for oversized text, nested objects,
arrays, numeric(p,s), date, uuid, inet, NOT NULL columns and a description on every column.
"""

from __future__ import annotations

from .schema import OVERSIZED, UNSPECIFIED, Column, TableDef


def _node(base: dict, description: str) -> dict:
    return {**base, "description": description}


BIGINT = {"type": "integer", "format": "int64"}
INT = {"type": "integer", "format": "int32"}
BOOL = {"type": "boolean"}
TEXT = {"type": "string"}
TIMESTAMP = {"type": "string", "format": "date-time"}
DATE = {"type": "string", "format": "date"}
UUID = {"type": "string", "format": "uuid"}
DOUBLE = {"type": "number", "format": "float64"}
INET = {"oneOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}]}
LONG_TEXT = {"oneOf": [{"type": "string", "const": OVERSIZED}, {"type": "string"}]}


def varchar(n: int) -> dict:
    return {"type": "string", "maxLength": n}


def numeric(precision: int, scale: int) -> dict:
    """numeric(p,s) the way DAP states it: an exclusive range and a step."""
    bound = 10 ** (precision - scale)
    return {"type": "number", "exclusiveMinimum": -bound, "exclusiveMaximum": bound, "multipleOf": 10**-scale}


def enum(*members: str) -> dict:
    return {"type": "string", "enum": [UNSPECIFIED, *members]}


def nested(**props: tuple[dict, str]) -> dict:
    return {
        "type": "object",
        "properties": {name: _node(base, desc) for name, (base, desc) in props.items()},
        "additionalProperties": False,
    }


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def col(name: str, base: dict, description: str, required: bool = False) -> Column:
    return Column(name, _node(base, description), required)


def req(name: str, base: dict, description: str) -> Column:
    return col(name, base, description, required=True)


def _table(ns: str, name: str, title: str, key: Column, *columns: Column, append_only=False) -> TableDef:
    return TableDef(ns, name, key, list(columns), title=title, append_only=append_only)


def _id(description: str) -> Column:
    return req("id", BIGINT, description)


def builtin_tables() -> list[TableDef]:
    """Fresh copies of every built-in table definition (version 1)."""
    stamps = [
        req("created_at", TIMESTAMP, "Timestamp when the record was created."),
        req("updated_at", TIMESTAMP, "Timestamp when the record was last updated."),
    ]
    return [
        _table(
            "canvas",
            "accounts",
            "Accounts (institution and sub-accounts).",
            _id("The unique identifier for the account."),
            col("name", varchar(255), "The name of the account."),
            col("deleted_at", TIMESTAMP, "Timestamp when the account was deleted."),
            col("parent_account_id", BIGINT, "The parent account, if any."),
            col("storage_quota", BIGINT, "Storage quota in bytes."),
            col("default_locale", varchar(255), "Default locale of the account."),
            col("sis_source_id", varchar(255), "The SIS identifier of the account."),
            col("uuid", varchar(255), "Public UUID of the account."),
            *stamps,
            req("workflow_state", enum("active", "deleted", "suspended"), "Life-cycle state of the account."),
        ),
        _table(
            "canvas",
            "users",
            "Users of the institution.",
            _id("The unique identifier for the user."),
            col("deleted_at", TIMESTAMP, "Timestamp when the user was deleted."),
            col("sortable_name", varchar(255), "Name used for sorting."),
            col("short_name", varchar(255), "Display name."),
            col("name", varchar(255), "Full name of the user."),
            col("pronouns", LONG_TEXT, "Pronouns of the user."),
            col("time_zone", varchar(255), "Preferred time zone."),
            col("public", BOOL, "Whether the profile is public."),
            col("merged_into_user_id", BIGINT, "The user this one was merged into."),
            *stamps,
            req(
                "workflow_state",
                enum("creation_pending", "deleted", "pending_approval", "pre_registered", "registered"),
                "Life-cycle state of the user.",
            ),
        ),
        _table(
            "canvas",
            "courses",
            "Stores attributes for a course.",
            _id("The unique identifier for the course."),
            req("account_id", BIGINT, "Points to the account associated with the course."),
            req("enrollment_term_id", BIGINT, "The enrollment term associated with the course."),
            col("name", varchar(255), "The name of the course."),
            col("course_code", varchar(255), "The course code."),
            col("start_at", TIMESTAMP, "The start date for the course."),
            col("conclude_at", TIMESTAMP, "The end date for the course."),
            col("is_public", BOOL, "True if the course is publicly visible."),
            col("syllabus_body", LONG_TEXT, "User-generated HTML for the course syllabus."),
            col("storage_quota", BIGINT, "Storage quota in bytes."),
            req("template", BOOL, "Whether the course is a template."),
            col(
                "settings",
                nested(
                    allow_student_discussion_editing=(BOOL, "Students may edit their own discussion posts."),
                    hide_final_grades=(BOOL, "Hide totals in student grades summary."),
                    course_format=(varchar(255), "Format of the course (on_campus, online, blended)."),
                    filter_speed_grader_by_student_group=(BOOL, "Filter SpeedGrader by student group."),
                ),
                "Settings of the course.",
            ),
            *stamps,
            req(
                "workflow_state",
                enum("created", "claimed", "available", "completed", "deleted"),
                "Life-cycle state for the course.",
            ),
        ),
        _table(
            "canvas",
            "enrollments",
            "Enrollments of users in course sections.",
            _id("The unique identifier for the enrollment."),
            req("user_id", BIGINT, "The enrolled user."),
            req("course_id", BIGINT, "The course of the enrollment."),
            req("course_section_id", BIGINT, "The course section of the enrollment."),
            req("role_id", BIGINT, "The role of the enrollment."),
            req(
                "type",
                enum(
                    "StudentEnrollment",
                    "TeacherEnrollment",
                    "TaEnrollment",
                    "DesignerEnrollment",
                    "ObserverEnrollment",
                    "StudentViewEnrollment",
                ),
                "The enrollment type.",
            ),
            col("start_at", TIMESTAMP, "Start of the enrollment."),
            col("end_at", TIMESTAMP, "End of the enrollment."),
            col("last_activity_at", TIMESTAMP, "Last activity of the user in the course."),
            col("total_activity_time", INT, "Total activity time in seconds."),
            req("limit_privileges_to_course_section", BOOL, "Whether the user can only see their section."),
            *stamps,
            req(
                "workflow_state",
                enum("creation_pending", "invited", "rejected", "active", "inactive", "completed", "deleted"),
                "Life-cycle state of the enrollment.",
            ),
        ),
        _table(
            "canvas",
            "assignments",
            "Assignments of courses.",
            _id("The unique identifier for the assignment."),
            col("title", varchar(255), "The title of the assignment."),
            col("description", LONG_TEXT, "The assignment description (HTML)."),
            col("due_at", TIMESTAMP, "The due date."),
            col("all_day_date", DATE, "The due date as a date, for all-day assignments."),
            col("points_possible", DOUBLE, "Maximum points possible."),
            col(
                "grading_type",
                enum("gpa_scale", "letter_grade", "not_graded", "pass_fail", "percent", "points"),
                "How the assignment is graded.",
            ),
            req(
                "submission_types",
                array(
                    enum(
                        "discussion_topic",
                        "online_quiz",
                        "external_tool",
                        "online_text_entry",
                        "online_url",
                        "online_upload",
                        "media_recording",
                        "none",
                        "on_paper",
                    )
                ),
                "Allowed submission types.",
            ),
            req("context_id", BIGINT, "The course of the assignment."),
            req("context_type", enum("Course"), "The type of the context."),
            req("peer_reviews", BOOL, "Whether peer reviews are enabled."),
            col("position", INT, "Position in the assignment group."),
            col(
                "turnitin_settings",
                nested(
                    originality_report_visibility=(varchar(255), "When students see the originality report."),
                    exclude_quoted=(BOOL, "Exclude quoted material."),
                    exclude_small_matches_value=(INT, "Small-match threshold."),
                ),
                "Turnitin settings of the assignment.",
            ),
            *stamps,
            req(
                "workflow_state",
                enum("unpublished", "published", "deleted", "duplicating", "fail_to_import"),
                "Life-cycle state of the assignment.",
            ),
        ),
        _table(
            "canvas",
            "submissions",
            "Submissions of assignments.",
            _id("The unique identifier for the submission."),
            req("assignment_id", BIGINT, "The assignment submitted to."),
            req("course_id", BIGINT, "The course of the submission."),
            req("user_id", BIGINT, "The submitting user."),
            col("body", LONG_TEXT, "The submission body (HTML)."),
            col("score", DOUBLE, "The raw score."),
            col("grade", varchar(255), "The grade."),
            col("attempt", INT, "Attempt number."),
            col("submitted_at", TIMESTAMP, "Timestamp of the submission."),
            col("points_deducted", numeric(6, 2), "Points deducted by a late policy."),
            col("late_policy_status", varchar(16), "Late policy status."),
            col("anonymous_id", varchar(5), "Anonymous identifier for anonymous grading."),
            col("resource_link_lookup_uuid", UUID, "Lookup UUID of the LTI resource link."),
            col(
                "submission_type",
                enum(
                    "basic_lti_launch",
                    "discussion_topic",
                    "external_tool",
                    "media_recording",
                    "online_file_upload",
                    "online_quiz",
                    "online_text_entry",
                    "online_upload",
                    "online_url",
                ),
                "The submission type.",
            ),
            req("redo_request", BOOL, "Whether a redo was requested."),
            col("created_at", TIMESTAMP, "Timestamp when the record was created."),
            col("updated_at", TIMESTAMP, "Timestamp when the record was last updated."),
            req(
                "workflow_state",
                enum("graded", "pending_review", "submitted", "unsubmitted", "deleted"),
                "Life-cycle state of the submission.",
            ),
        ),
        _table(
            "canvas",
            "pseudonyms",
            "Logins of users (pseudonyms).",
            _id("The unique identifier for the pseudonym."),
            req("user_id", BIGINT, "The user of the login."),
            req("account_id", BIGINT, "The account of the login."),
            req("unique_id", varchar(255), "The login name."),
            req("login_count", INT, "Number of logins."),
            req("failed_login_count", INT, "Number of failed logins."),
            col("last_login_at", TIMESTAMP, "Last login."),
            col("last_login_ip", varchar(255), "IP address of the last login."),
            col("sis_user_id", varchar(255), "SIS identifier of the user."),
            col("deleted_at", TIMESTAMP, "Timestamp when the login was deleted."),
            *stamps,
            req("workflow_state", enum("active", "deleted", "suspended"), "Life-cycle state of the login."),
        ),
        _table(
            "canvas",
            "scores",
            "Scores of enrollments.",
            _id("The unique identifier for the score."),
            req("enrollment_id", BIGINT, "The enrollment scored."),
            col("grading_period_id", BIGINT, "The grading period, if any."),
            col("current_score", DOUBLE, "Current score."),
            col("final_score", DOUBLE, "Final score."),
            col("override_score", DOUBLE, "Override score."),
            req("course_score", BOOL, "Whether this is the course score."),
            col("created_at", TIMESTAMP, "Timestamp when the record was created."),
            col("updated_at", TIMESTAMP, "Timestamp when the record was last updated."),
            req("workflow_state", enum("active", "deleted"), "Life-cycle state of the score."),
        ),
        _table(
            "canvas_logs",
            "web_logs",
            "Canvas web application access logs.",
            req("id", UUID, "The unique identifier for a logged web request."),
            req("timestamp", TIMESTAMP, "When the request was made (UTC)."),
            col("user_id", BIGINT, "The user that made the request."),
            col("course_id", BIGINT, "The course of the request."),
            req("url", TEXT, "Path and query string of the requested URL."),
            req(
                "http_method",
                enum("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"),
                "HTTP method.",
            ),
            req(
                "http_status",
                enum("200", "201", "204", "302", "304", "400", "401", "403", "404", "500"),
                "HTTP status code.",
            ),
            req("http_version", enum("HTTP/1.0", "HTTP/1.1", "HTTP/2.0"), "HTTP protocol version."),
            req("remote_ip", INET, "IPv4 or IPv6 address of the client."),
            req("interaction_micros", INT, "Time to serve the request in microseconds."),
            col(
                "web_application_controller", {"oneOf": [enum(), TEXT]}, "Controller that served the request."
            ),
            col("web_application_action", {"oneOf": [enum(), TEXT]}, "Action that served the request."),
            col(
                "web_application_context_type",
                {
                    "type": "string",
                    "enum": [
                        "AssessmentQuestion",
                        "Assignment",
                        "ContentMigration",
                        "CourseSection",
                        "Quizzes::QuizSubmission",
                        "StudentEnrollment",
                        "UserProfile",
                    ],
                },
                "Containing object type of the request.",
            ),
            col("session_id", UUID, "The user's session."),
            req("participated", BOOL, "Whether the request counts as participation."),
            col(
                "user_agent",
                {"oneOf": [{"type": "string", "const": OVERSIZED}, varchar(255)]},
                "User agent string of the client.",
            ),
            append_only=True,
        ),
        _table(
            "catalog",
            "products",
            "Catalog products (courses and programs).",
            _id("The unique identifier for the product."),
            req("title", varchar(255), "The title of the product."),
            col("price", numeric(10, 2), "List price."),
            col("start_date", DATE, "Start date."),
            col("tags", array(varchar(64)), "Tags of the product."),
            *stamps,
            req("state", enum("draft", "published", "archived", "deleted"), "State of the product."),
        ),
    ]
