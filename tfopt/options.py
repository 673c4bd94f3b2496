"""How an option is declared, once: its type, default, allowed values and range.

Two shapes, one vocabulary:

* a :class:`Field` is one key of a section (a recipe section, a technique's options): the YAML types it
  takes, its default, whether it is required, its allowed ``choices`` and a ``check`` of its range;
* a :class:`Number` or :class:`Flag` declares one value's type and range; calling it checks a value and
  raises ConfigError naming the option (modules keep such declarations in an ``OPTIONS`` table and check
  their arguments there; a Field may take one as its ``check``).

:func:`read_section` checks a mapping against its Fields and records every problem (unknown key, missing
key, wrong type, value out of range) in a problems collector (``tfopt.pipeline.config._yaml.Problems``);
:func:`check_value` checks one value and raises. :func:`options_from` builds the Fields of a function's
keyword arguments from its signature, so a technique's options have the defaults its function has.

>>> fields = options_from(lambda x, epochs=1, rate=1e-3: x, ["epochs", "rate"], epochs={"check": at_least(1)})
>>> fields["epochs"].kinds, fields["epochs"].default, fields["rate"].kinds
(('integer',), 1, ('number',))
>>> check_value("epochs", fields["epochs"], 0)
Traceback (most recent call last):
...
tfopt.errors.ConfigError: epochs=0 is out of range; allowed: >= 1
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import re
from typing import Callable

from tfopt.errors import SEED_LIMIT, ConfigError, check_range

__all__ = ["Field", "Declaration", "Number", "Flag", "read_section", "check_value", "options_from",
           "signature_default", "describe", "allowed", "safe_name", "at_least", "in_unit", "positive", "int_list",
           "one_of_or", "seed_range", "declared", "INT", "FLOAT", "STR", "BOOL", "LIST", "MAP", "ANY", "NONE"]

INT, FLOAT, STR, BOOL, LIST, MAP, NONE = "integer", "number", "string", "boolean", "list", "mapping", "null"
ANY = "any"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ---------------------------------------------------------------- value declarations (Number, Flag)


class Declaration:
    """Base of the value declarations: ``declaration(name, value)`` checks ``value`` and returns it."""

    def __call__(self, name: str, value):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def allowed(self, name: str = "value") -> str:
        """String, what the declaration allows (for listings such as ``tfopt techniques``)."""
        raise NotImplementedError  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class Number(Declaration):
    """The declaration of a numeric option: integer or real, and its range (bounds optional, open when asked).

    Calling it checks a value (wrong type, NaN, infinity or out of range raise ConfigError naming the option,
    the value and the range) and returns it as an int or a float. Modules declare their options once, in a
    table, and both their functions and recipe validation check values against it.

    >>> Number(0, 1, high_open=True)("beta_1", 0.9)
    0.9
    >>> Number(0, 1, high_open=True)("beta_1", 5.0)
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: beta_1=5.0 is out of range; allowed: 0 <= beta_1 < 1
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def allowed(self, name: str = "value") -> str:
        lo = "" if self.low is None else f"{self.low} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high}"
        return f"{lo}{name}{hi}"

    def __call__(self, name: str, value):
        if self.integer and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
            raise ConfigError(f"{name}={value!r} has the wrong type ({type(value).__name__}); allowed: an integer "
                              f"with {self.allowed(name)}")
        check_range(name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open)
        return int(value) if self.integer else float(value)


@dataclasses.dataclass(frozen=True)
class Flag(Declaration):
    """The declaration of a boolean option; calling it checks a value and returns it.

    >>> Flag()("nesterov", True)
    True
    """

    def allowed(self, name: str = "value") -> str:
        return "true or false"

    def __call__(self, name: str, value):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} has the wrong type ({type(value).__name__}); allowed: true or false")
        return value


# ---------------------------------------------------------------- keys of a section (Field)


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
        check: The range of a well-typed value: a :class:`Number`/:class:`Flag` declaration, or a callable
            ``value -> str | None``: None when the value is fine, else the allowed range (reported as
            "key=value is out of range; allowed: ..."), or a whole message starting with "!"; a
            ConfigError it raises is reported as it is.
        choices: Tuple or None, the allowed values (None is always allowed when NONE is in kinds).
        section: String or None, the kind of nested section the value is, checked by whoever reads it:
            "model" (a builder and its arguments), "data" (a data section), "variants" (export variants),
            "space" (a search space), "stage" (the name of an earlier stage that makes a model).
        help: String, one line saying what the option does (``tfopt techniques`` prints it).
    """

    kinds: tuple = (ANY,)
    default: object = None
    required: bool = False
    check: Callable | None = None
    choices: tuple | None = None
    section: str | None = None
    help: str = ""


def _problem(key: str, value, field: Field) -> str | None:
    """The message refusing ``value`` for ``field`` (None when it is fine); ``key`` names it."""
    if not any(_type_ok(value, k) for k in field.kinds):
        return f"{key}={value!r} has the wrong type ({_describe(value)}); allowed: {' or '.join(field.kinds)}"
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}={value!r} is out of range; allowed: a finite number"
    if field.choices is not None and value not in field.choices:
        return f"{key}={value!r} is not allowed; allowed: {', '.join(map(repr, field.choices))}"
    if field.check is None:
        return None
    try:
        if isinstance(field.check, Declaration):
            field.check(key, value)
            return None
        message = field.check(value)
    except ConfigError as err:  # a declaration's own message
        return str(err)
    if not message:
        return None
    return f"{key}={value!r}: {message[1:]}" if message.startswith("!") else \
        f"{key}={value!r} is out of range; allowed: {message}"


def read_section(mapping, fields: dict, path: tuple, problems, what: str) -> dict | None:
    """Check ``mapping`` against ``fields``; returns the cleaned dict (defaults filled) or None if not a mapping.

    Args:
        mapping: The parsed YAML value of the section.
        fields: Dict of key -> Field.
        path: Tuple, the key path of the section (for messages and line numbers).
        problems: Problems collector (``add(path, message)``).
        what: String, the section's name in messages (e.g. "training").

    >>> from tfopt.pipeline.config._yaml import Problems
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
        message = _problem(key, value, field)
        if message:
            problems.add(path + (key,), message)
    return out


def check_value(name: str, field: Field, value):
    """``value`` when ``field`` allows it, else ConfigError naming ``name`` (the messages of :func:`read_section`).

    >>> check_value("n_clusters", Field((INT,), 16, check=at_least(2)), 8)
    8
    """
    message = _problem(name, value, field)
    if message:
        raise ConfigError(message)
    return value


def _describe(value) -> str:
    return "null" if value is None else type(value).__name__


# ---------------------------------------------------------------- Fields from a function's signature

_ANNOTATION_KINDS = {"int": INT, "float": FLOAT, "str": STR, "bool": BOOL, "list": LIST, "tuple": LIST,
                     "dict": MAP, "None": NONE}


def _kinds_of(default, annotation, required: bool = False) -> tuple:
    """The YAML kinds of a parameter: from its default's type, else its annotation (null too when the default
    is None), else ANY."""
    if isinstance(default, bool):
        return (BOOL,)
    for kind, types in ((INT, int), (FLOAT, float), (STR, str), (LIST, (list, tuple)), (MAP, dict)):
        if isinstance(default, types):
            return (kind,)
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    kinds = tuple(_ANNOTATION_KINDS.get(part.strip()) for part in str(text).split("|"))
    if kinds and all(kinds):
        return tuple(dict.fromkeys(kinds + ((NONE,) if default is None and not required else ())))
    return (ANY,)


def options_from(fn: Callable, names, **fields) -> dict:
    """The Fields of ``names``, in that order: each parameter of ``fn`` gets its default (a tuple as a list) and
    its kinds from the signature; ``fields[name]`` adds to that (a dict of Field attributes, e.g. a ``check``)
    or replaces it (a Field: the option is declared there, e.g. one ``fn`` does not take).

    Args:
        fn: The technique's function.
        names: Sequence of option names (what recipes and the command line call them).
        **fields: Per option, a dict of Field attributes or a whole Field.

    >>> from tfopt.options import options_from
    >>> def shrink(model, factor: float = 0.5, layers=None): ...
    >>> opts = options_from(shrink, ["factor", "layers"], factor={"check": positive})
    >>> opts["factor"].default, opts["layers"].kinds
    (0.5, ('any',))
    """
    params = inspect.signature(fn).parameters
    out = {}
    for name in names:
        given = fields.get(name)
        if isinstance(given, Field):
            out[name] = given
            continue
        if name not in params:
            raise ValueError(f"options_from({getattr(fn, '__name__', fn)!r}): it takes no {name!r}; "
                             f"declare that option with a Field")
        p = params[name]
        required = p.default is inspect.Parameter.empty
        default = None if required else (list(p.default) if isinstance(p.default, tuple) else p.default)
        field = Field(_kinds_of(default, p.annotation, required), default, required=required)
        out[name] = dataclasses.replace(field, **(given or {}))
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"options_from: {unknown} are not among the names {list(names)}")
    return out


def signature_default(fn: Callable, name: str):
    """The default of ``fn``'s parameter ``name`` as a recipe holds it (a tuple as a list); ``inspect.Parameter.empty``
    when it has none (required or not a parameter)."""
    p = inspect.signature(fn).parameters.get(name)
    if p is None or p.default is inspect.Parameter.empty:
        return inspect.Parameter.empty
    return list(p.default) if isinstance(p.default, tuple) else p.default


# ---------------------------------------------------------------- what a Field allows, in words


def _with_allowed(check: Callable, text: str) -> Callable:
    check.allowed = text
    return check


def allowed(field: Field) -> str:
    """String, what ``field`` allows in words (choices, range), for listings.

    >>> allowed(Field((INT,), 1, check=at_least(1))), allowed(Field((STR,), "a", choices=("a", "b")))
    ('>= 1', "'a', 'b'")
    """
    if field.choices is not None:
        return ", ".join(map(repr, field.choices))
    if isinstance(field.check, Declaration):
        return field.check.allowed()
    return getattr(field.check, "allowed", "") if field.check is not None else ""


def describe(name: str, field: Field) -> str:
    """One line for ``name``: type, default (or required), what is allowed and the help text.

    >>> describe("epochs", Field((INT,), 2, check=at_least(1), help="fine-tuning epochs"))
    'epochs: integer, default 2; allowed: >= 1. fine-tuning epochs'
    """
    default = "required" if field.required else f"default {field.default!r}" if not isinstance(field.default, str) \
        else f"default {field.default}"
    text = f"{name}: {' or '.join(field.kinds)}, {default}"
    if allowed(field):
        text += f"; allowed: {allowed(field)}"
    return text + (f". {field.help}" if field.help else "")


# ---------------------------------------------------------------- reusable checks (None means fine)


def at_least(low):
    """A check: ``value >= low``."""
    return _with_allowed(lambda v: None if v >= low else f">= {low}", f">= {low}")


def in_unit(low_open: bool = False, high_open: bool = True):
    """A check: value in [0, 1) (bounds' openness configurable)."""
    lo, hi = ("<" if low_open else "<="), ("<" if high_open else "<=")

    def check(v):
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
        return None if ok else f"0 {lo} value {hi} 1"

    return _with_allowed(check, f"0 {lo} value {hi} 1")


def seed_range(v) -> str | None:
    """A check: a seed in [0, 2**32) (as :func:`tfopt.errors.check_seed` asks of every seed).

    >>> seed_range(0), seed_range(2**32)
    (None, '0 <= seed < 2**32 (4294967296)')
    """
    return None if 0 <= v < SEED_LIMIT else f"0 <= seed < 2**32 ({SEED_LIMIT})"


def declared(name: str, declaration):
    """A check from an option's declaration (e.g. a :class:`Number` in a module's ``OPTIONS``) naming the
    option ``name``: the declaration's own message when it refuses the value.

    >>> declared("threads", Number(1, 8, integer=True))(4)
    """

    def check(v):
        declaration(name, v)

    return _with_allowed(check, declaration.allowed(name))


def positive(v) -> str | None:
    """A check: value > 0."""
    return None if v > 0 else "> 0"


positive.allowed = "> 0"


def safe_name(v) -> str | None:
    """A check for names used in paths: letters, digits, ``_ . + -``, not starting with a dot; no ``/``.

    >>> safe_name("pruned_int8"), safe_name("../x")
    (None, '!names become file names inside the run directory: use letters, digits, _ . + - (no /, no leading dot, no ..)')
    """
    if _SAFE.match(v) and ".." not in v:
        return None
    return "!names become file names inside the run directory: use letters, digits, _ . + - (no /, no leading dot, no ..)"


safe_name.allowed = "letters, digits, _ . + - (no /, no leading dot)"


def int_list(min_len: int = 1, low: int = 0, max_len: int | None = None):
    """A check: a list of ``min_len``..``max_len`` integers >= ``low``."""
    size = f"{min_len}" + (f" to {max_len}" if max_len != min_len else "") if max_len else f"at least {min_len}"
    text = f"a list of {size} integers >= {low}"

    def check(v):
        ok = all(isinstance(i, int) and not isinstance(i, bool) and i >= low for i in v)
        ok = ok and len(v) >= min_len and (max_len is None or len(v) <= max_len)
        return None if ok else text

    return _with_allowed(check, text)


def one_of_or(values: tuple, otherwise: Callable, text: str):
    """A check: one of ``values``, or a value ``otherwise`` accepts (``otherwise(v)`` True); ``text`` says what.

    >>> check = one_of_or(("all",), lambda v: isinstance(v, int) and v >= 0, "'all' or an integer >= 0")
    >>> check("all"), check(-1)
    (None, "'all' or an integer >= 0")
    """
    return _with_allowed(lambda v: None if v in values or otherwise(v) else text, text)
