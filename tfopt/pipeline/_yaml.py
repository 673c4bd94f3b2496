"""Reading recipe YAML safely with the line number of every key, and collecting problems to report at once."""

from __future__ import annotations

from pathlib import Path

import yaml

from tfopt.errors import ConfigError

__all__ = ["parse_yaml", "Problems", "format_path"]


def format_path(path: tuple) -> str:
    """The key path ``("stages", 2, "prune", "epochs")`` as ``stages[2].prune.epochs``.

    >>> format_path(("stages", 2, "prune", "epochs"))
    'stages[2].prune.epochs'
    """
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(recipe)"


def _line_map(node, path: tuple, lines: dict) -> None:
    """Record the 1-based line of every mapping key and sequence item under ``node``."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            lines[sub] = key.start_mark.line + 1
            _line_map(value, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = path + (i,)
            lines[sub] = item.start_mark.line + 1
            _line_map(item, sub, lines)


def parse_yaml(text: str, source: str) -> tuple[object, dict]:
    """Parse recipe ``text`` with ``yaml.safe_load``; returns ``(value, {key path: line})``.

    Malformed YAML and an empty document raise a ConfigError naming ``source`` and the line.

    >>> value, lines = parse_yaml("a:\\n  b: 1\\n", "x.yaml")
    >>> value, lines[("a", "b")]
    ({'a': {'b': 1}}, 2)
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    if node is None or value is None:
        raise ConfigError(f"{source}:1: the recipe is empty; it needs at least 'name', 'data' and 'model'")
    lines = {(): node.start_mark.line + 1}
    _line_map(node, (), lines)
    return value, lines


class Problems:
    """Collects ``(key path, message)`` problems and raises them as one ConfigError, one line each.

    >>> p = Problems("r.yaml", {("seed",): 3, ("name",): 1})
    >>> p.add(("seed",), "seed='x' must be an integer")
    >>> str(p.error())
    "r.yaml:3: seed: seed='x' must be an integer"
    >>> p.add(("name",), "name is required")
    >>> str(p.error()).splitlines()
    ['2 problem(s) in recipe r.yaml:', '  r.yaml:1: name: name is required', "  r.yaml:3: seed: seed='x' must be an integer"]
    """

    def __init__(self, source: str, lines: dict | None = None):
        self.source = source
        self.lines = lines or {}
        self.items: list[tuple[tuple, str]] = []

    def line(self, path: tuple) -> int | None:
        """The line of ``path`` or of its nearest ancestor present in the file (None for a dict recipe)."""
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def add(self, path: tuple, message: str) -> None:
        """Record one problem at ``path``."""
        self.items.append((tuple(path), message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> ConfigError:
        """One ConfigError listing every problem as ``file:line: key.path: message`` (one line when there is
        only one problem, so the command line prints one line)."""
        head = f"{len(self.items)} problem(s) in recipe {self.source}:"
        body = []
        for path, message in sorted(self.items, key=lambda item: self.line(item[0]) or 0):
            line = self.line(path)
            where = f"{self.source}:{line}" if line is not None else self.source
            body.append(f"  {where}: {format_path(path)}: {message}")
        if len(body) == 1:
            return ConfigError(body[0].strip())
        return ConfigError("\n".join([head, *body]))

    def raise_if_any(self) -> None:
        """Raise :meth:`error` when any problem was recorded."""
        if self.items:
            raise self.error()


def read_text(path) -> str:
    """The text of recipe file ``path``; ConfigError naming it when it cannot be read."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"recipe file {str(path)!r} cannot be read: {err}") from None
