"""Field specs of recipe sections: types, defaults, ranges, and one reader that reports every bad key.

A section is a dict ``{key: Field}``; :func:`read_section` checks a mapping against it, records each
unknown key, missing key, wrong type or out-of-range value in :class:`~tfopt.pipeline._yaml.Problems`,
and returns the cleaned values with defaults filled in.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

from tfopt.errors import SEED_LIMIT, ConfigError

__all__ = ["Field", "read_section", "safe_name", "INT", "FLOAT", "STR", "BOOL", "LIST", "MAP", "ANY", "NONE"]

INT, FLOAT, STR, BOOL, LIST, MAP, NONE = "integer", "number", "string", "boolean", "list", "mapping", "null"
ANY = "any"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _type_ok(value, kind: str) -> bool:
    if kind == ANY:
        return True
    if kind == NONE:
        return value is None
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    if kind == LIST:
        return isinstance(value, list)
    if kind == MAP:
        return isinstance(value, dict)
    raise ValueError(kind)


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a section.

    Attributes:
        kinds: Tuple of strings, the allowed YAML types (INT, FLOAT, STR, BOOL, LIST, MAP, NONE, ANY).
        default: The value when the key is absent (ignored when ``required``).
        required: Boolean, the key must be present.
        check: Callable ``value -> str | None``: None when a well-typed value is fine, else the allowed range
            (reported as "key=value is out of range; allowed: ..."), or a whole message starting with "!";
            a ConfigError it raises is reported as it is (see :func:`declared`).
        choices: Tuple or None, the allowed values (None is always allowed when NONE is in kinds).
    """

    kinds: tuple = (ANY,)
    default: object = None
    required: bool = False
    check: Callable | None = None
    choices: tuple | None = None


def read_section(mapping, fields: dict, path: tuple, problems, what: str) -> dict | None:
    """Check ``mapping`` against ``fields``; returns the cleaned dict (defaults filled) or None if not a mapping.

    Args:
        mapping: The parsed YAML value of the section.
        fields: Dict of key -> Field.
        path: Tuple, the key path of the section (for messages and line numbers).
        problems: Problems collector.
        what: String, the section's name in messages (e.g. "training").

    >>> from tfopt.pipeline._yaml import Problems
    >>> p = Problems("r.yaml")
    >>> read_section({"epochs": 0}, {"epochs": Field((INT,), 1, check=lambda v: None if v >= 1 else ">= 1")},
    ...              ("training",), p, "training")
    {'epochs': 0}
    >>> p.items[0][1]
    'epochs=0 is out of range; allowed: >= 1'
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        problems.add(path, f"{what} must be a mapping of keys ({', '.join(fields)}), got {_describe(mapping)}")
        return None
    out = {}
    for key in mapping:
        if key not in fields:
            problems.add(path + (key,), f"unknown key {key!r} in {what}; allowed: {', '.join(fields)}")
    for key, field in fields.items():
        if key not in mapping:
            if field.required:
                problems.add(path, f"{what} needs the key {key!r}")
            out[key] = field.default
            continue
        value = mapping[key]
        out[key] = value
        if not any(_type_ok(value, k) for k in field.kinds):
            problems.add(path + (key,), f"{key}={value!r} has the wrong type ({_describe(value)}); "
                                        f"allowed: {' or '.join(field.kinds)}")
            continue
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.add(path + (key,), f"{key}={value!r} is out of range; allowed: a finite number")
            continue
        if field.choices is not None and value not in field.choices:
            allowed = ", ".join(map(repr, field.choices))
            problems.add(path + (key,), f"{key}={value!r} is not allowed; allowed: {allowed}")
            continue
        if field.check is not None:
            try:
                message = field.check(value)
            except ConfigError as err:  # a declared option's own message (see declared)
                problems.add(path + (key,), str(err))
                continue
            if message:
                problems.add(path + (key,), f"{key}={value!r} is out of range; allowed: {message}"
                             if not message.startswith("!") else f"{key}={value!r}: {message[1:]}")
    return out


def _describe(value) -> str:
    return "null" if value is None else type(value).__name__


# ---------------------------------------------------------------- reusable checks (None means fine)


def at_least(low):
    """A check: ``value >= low``."""
    return lambda v: None if v >= low else f">= {low}"


def in_unit(low_open: bool = False, high_open: bool = True):
    """A check: value in [0, 1) (bounds' openness configurable)."""
    lo, hi = ("<" if low_open else "<="), ("<" if high_open else "<=")

    def check(v):
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
        return None if ok else f"0 {lo} value {hi} 1"

    return check


def seed_range(v) -> str | None:
    """A check: a seed in [0, 2**32) (as :func:`tfopt.errors.check_seed` asks of every seed).

    >>> seed_range(0), seed_range(2**32)
    (None, '0 <= seed < 2**32 (4294967296)')
    """
    return None if 0 <= v < SEED_LIMIT else f"0 <= seed < 2**32 ({SEED_LIMIT})"


def declared(name: str, declaration):
    """A check from an option's declaration (e.g. a :class:`tfopt.errors.Number` in a module's ``OPTIONS``):
    the declaration's own message when it refuses the value.

    >>> from tfopt.errors import Number
    >>> declared("threads", Number(1, 8, integer=True))(4)
    """

    def check(v):
        declaration(name, v)

    return check


def positive(v) -> str | None:
    """A check: value > 0."""
    return None if v > 0 else "> 0"


def safe_name(v) -> str | None:
    """A check for names used in paths: letters, digits, ``_ . + -``, not starting with a dot; no ``/``.

    >>> safe_name("pruned_int8"), safe_name("../x")
    (None, '!names become file names inside the run directory: use letters, digits, _ . + - (no /, no leading dot, no ..)')
    """
    if _SAFE.match(v) and ".." not in v:
        return None
    return "!names become file names inside the run directory: use letters, digits, _ . + - (no /, no leading dot, no ..)"


def int_list(min_len: int = 1, low: int = 0, max_len: int | None = None):
    """A check: a list of ``min_len``..``max_len`` integers >= ``low``."""

    def check(v):
        ok = all(isinstance(i, int) and not isinstance(i, bool) and i >= low for i in v)
        ok = ok and len(v) >= min_len and (max_len is None or len(v) <= max_len)
        size = f"{min_len}" + (f" to {max_len}" if max_len != min_len else "") if max_len else f"at least {min_len}"
        return None if ok else f"a list of {size} integers >= {low}"

    return check
