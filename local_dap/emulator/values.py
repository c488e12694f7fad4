"""Deterministic value generation for any column type the client accepts.

Each column has a :class:`Pool` of values generated from hashes of (seed, table, column); a row picks one
slot per column from a hash of (seed, table, row, version) and the column's name alone, so a row's value
for a column never depends on which other columns exist: adding or dropping a column leaves the others
intact. Values (and their encoded text, see ``formats``) are made once per slot, not once per cell.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import math
import uuid
import zlib
from collections.abc import Callable

from .schema import OVERSIZED, UNSPECIFIED

MASK = (1 << 64) - 1
UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
# Generated timestamps fall in [2020-01-01, 2026-01-01).
_TS_LOW = int((dt.datetime(2020, 1, 1, tzinfo=UTC) - EPOCH).total_seconds())
_TS_SPAN = 6 * 365 * 86400
_WORDS = (
    "alpha", "beta", "gamma", "délta", "ε", "zeta", "課程", "quiz", "tab\there", "line\nbreak",
    'quote"d', "back\\slash", "comma,", "NULL", "\\N", "🙂", "O'Brien", "",
)  # fmt: skip
Generator = Callable[[int], object]
POOL_SIZE = 4093  # slots per column; a prime, so a hash modulo it spreads evenly


def mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash step."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def name_hash(*parts: object) -> int:
    """A stable 64-bit hash of names (not Python's salted ``hash``)."""
    data = "\x1f".join(str(p) for p in parts).encode()
    return mix(zlib.crc32(data) | (zlib.adler32(data) << 32))


def slots(row_hash: int, column_hashes: list[int]) -> list[int]:
    """A row's slot in each column's pool, from the row's hash and the column's."""
    return [(row_hash ^ h) % POOL_SIZE for h in column_hashes]


class Pool:
    """A column's values by slot, each generated on first use.

    A fifth of a nullable column's slots are NULL; half the slots of a column whose enum gained ``member``
    hold it; with no ``generate`` (a column the row was written without) every slot is NULL. ``texts``
    keeps the slots' encoded forms (None until made), per encoding."""

    def __init__(self, generate: Generator | None, seed: int, nullable: bool, member: object = None) -> None:
        self.generate = generate
        self.seed = seed
        self.nullable = nullable
        self.member = member
        self.values: dict[int, object] = {}
        self.texts: dict[tuple, list[str | None]] = {}

    def value(self, slot: int) -> object:
        if slot not in self.values:
            self.values[slot] = self._generate(slot)
        return self.values[slot]

    def _generate(self, slot: int) -> object:
        if self.generate is None or (self.nullable and slot % 5 == 0):
            return None
        if self.member is not None and slot & 1:
            return self.member
        return self.generate(mix(self.seed + slot))


def micros_to_datetime(micros: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=micros)


def datetime_to_micros(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _string(h: int, max_length: int | None) -> str:
    words = [_WORDS[(h >> (6 * i)) % len(_WORDS)] for i in range(1 + h % 4)]
    text = " ".join(words) + f" #{h % 100000}"
    if max_length is not None:
        text = text[:max_length]
    return text


def _datetime(h: int) -> dt.datetime:
    seconds = _TS_LOW + h % _TS_SPAN
    micros = (h >> 40) % 1_000_000 if h & 1 else 0
    return dt.datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


def _integer(node: dict, name: str) -> Generator:
    if "enum" in node:
        members = node["enum"]
        return lambda h: members[h % len(members)]
    fmt = node.get("format")
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        span = int(high) - int(low) + 1
        return lambda h: int(low) + h % span
    if name.endswith("_id") or name == "id":
        return lambda h: 1 + h % 5000
    limit = {"int16": 1 << 15, "int32": 1 << 31}.get(fmt, 1 << 40)
    return lambda h: h % limit


def _number(node: dict) -> Generator:
    fmt = node.get("format")
    if fmt == "float32":
        # multiples of 1/4 survive float4 storage exactly
        return lambda h: (h % 400000) / 4
    if fmt == "float64" or "multipleOf" not in node:
        return lambda h: (h % 10**9) / 1000
    scale = max(0, -round(math.log10(node["multipleOf"])))
    bound = int(node.get("exclusiveMaximum", 10**6))
    step = decimal.Decimal(1).scaleb(-scale)
    span = (bound * 10**scale) - 1
    return lambda h: (decimal.Decimal((h % (2 * span + 1)) - span) * step).quantize(step)


def _string_node(node: dict, name: str) -> Generator:
    if "const" in node:
        const = node["const"]
        return lambda h: const
    if "enum" in node:
        members = node["enum"]
        common = [m for m in members if m != UNSPECIFIED] or members
        # __dap_unspecified__ turns up now and then, as on the real API
        return lambda h: UNSPECIFIED if UNSPECIFIED in members and h % 53 == 0 else common[h % len(common)]
    fmt = node.get("format")
    if fmt == "date-time":
        return _datetime
    if fmt == "date":
        return lambda h: _datetime(h).date()
    if fmt == "time":
        return lambda h: _datetime(h).time()
    if fmt == "uuid":
        return lambda h: uuid.UUID(int=(h << 64) | mix(h), version=4)
    if fmt == "ipv4":
        return lambda h: ipaddress.IPv4Address(h & 0xFFFFFFFF)
    if fmt == "ipv6":
        return lambda h: ipaddress.IPv6Address((0x2001_0DB8 << 96) | (h & ((1 << 64) - 1)))
    if fmt == "duration":
        return lambda h: dt.timedelta(seconds=h % 86400)
    max_length = node.get("maxLength")
    return lambda h: _string(h, max_length)


def _one_of(nodes: list[dict], name: str) -> Generator:
    oversized = [n for n in nodes if n.get("const") == OVERSIZED]
    others = [compile_node(n, name) for n in nodes if n.get("const") != OVERSIZED]
    if oversized and others:
        return lambda h: OVERSIZED if h % 29 == 0 else others[(h >> 8) % len(others)](mix(h))
    branches = others or [compile_node(n, name) for n in nodes]
    return lambda h: branches[h % len(branches)](mix(h))


def _object(node: dict, name: str) -> Generator:
    if "properties" not in node:
        return lambda h: {"kind": _WORDS[h % 5], "n": h % 1000, "flags": [bool(h & 2), bool(h & 4)]}
    required = set(node.get("required", []))
    parts = [(p, compile_node(n, p), p in required, name_hash(p)) for p, n in node["properties"].items()]

    def generate(h: int) -> dict:
        result = {}
        for prop, gen, is_required, prop_hash in parts:
            cell = mix(h ^ prop_hash)
            if is_required or cell % 4:
                result[prop] = gen(cell)
        if not result and parts:  # an object, never NULL: whether the column is NULL is the pool's choice
            prop, gen, _, prop_hash = parts[0]
            result[prop] = gen(mix(h ^ prop_hash))
        return result

    return generate


def _array(node: dict, name: str) -> Generator:
    item = compile_node(node.get("items", {"type": "string"}), name)
    return lambda h: [item(mix(h + i)) for i in range(h % 4)]


def compile_node(node: dict, name: str) -> Generator:
    """A function from a 64-bit cell hash to a (non-NULL) Python value valid for ``node``."""
    if "oneOf" in node or "anyOf" in node:
        return _one_of(node.get("oneOf") or node["anyOf"], name)
    kind = node.get("type")
    if kind == "integer":
        return _integer(node, name)
    if kind == "number":
        return _number(node)
    if kind == "boolean":
        return lambda h: bool(h & 1)
    if kind == "string":
        return _string_node(node, name)
    if kind == "object":
        return _object(node, name)
    if kind == "array":
        return _array(node, name)
    raise ValueError(f"column {name}: unsupported schema node {node}")
