"""How values travel: JSON representation, TSV/CSV fields, timestamps on the wire."""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import ipaddress
import json
import re
import uuid

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1)


def format_timestamp(value: dt.datetime) -> str:
    """``YYYY-MM-DDThh:mm:ss[.ffffff]Z``, as the API writes timestamps."""
    v = value.astimezone(UTC) if value.tzinfo else value
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    return text + (f".{v.microsecond:06d}Z" if v.microsecond else "Z")


@functools.cache
def _minute_text(minutes: int) -> str:
    return (_EPOCH + dt.timedelta(minutes=minutes)).isoformat()[:16]


def format_micros(micros: int) -> str:
    """:func:`format_timestamp` of a time in microseconds since the epoch, without making a datetime."""
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    if fraction:
        return f"{_minute_text(minutes)}:{second:02d}.{fraction:06d}Z"
    return f"{_minute_text(minutes)}:{second:02d}Z"


def parse_timestamp(text: str) -> dt.datetime:
    """An ISO 8601 date-time with ``Z`` or an offset, as an aware UTC datetime."""
    value = dt.datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return value.astimezone(UTC)


def to_json(value: object) -> object:
    """The JSON form of a generated value (JSON Lines and nested JSON columns)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"PT{int(value.total_seconds())}S"
    if isinstance(value, (uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def json_text(value: object) -> str:
    return json.dumps(to_json(value), ensure_ascii=False, separators=(",", ":"))


def plain_text(value: object) -> str:
    """A non-NULL value as text, before TSV/CSV escaping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value.compressed
    if isinstance(value, (dict, list, tuple)):
        return json_text(value)
    if isinstance(value, dt.timedelta):
        return to_json(value)
    raise TypeError(f"no text form for {type(value).__name__}")


_TSV_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        "\x00": "\\0",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\v": "\\v",
    }
)


def tsv_field(value: object) -> str:
    """PostgreSQL COPY text form: ``\\N`` for NULL, backslash escapes."""
    if value is None:
        return "\\N"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = plain_text(value)
    return text.translate(_TSV_ESCAPES) if _NEEDS_ESCAPE.search(text) else text


_NEEDS_ESCAPE = re.compile("[\\\\\x00\b\f\n\r\t\v]")
_CSV_SPECIAL = frozenset(',"\n\r\t')


def csv_field(value: object) -> str:
    """RFC 4180 with DAP's extensions: unquoted ``NULL`` for NULL, ``""`` for the empty string."""
    if value is None:
        return "NULL"
    text = plain_text(value)
    if isinstance(value, str) or isinstance(value, (dict, list)):
        if text in ("", "NULL") or any(c in _CSV_SPECIAL for c in text):
            return '"' + text.replace('"', '""') + '"'
    return text
