"""Reading recipe YAML safely with the line number of every key, and collecting problems to report at once.

A recipe is parsed once, by PyYAML's safe loader, within limits that keep a hostile or careless file from
exhausting memory or time: at most :data:`MAX_BYTES` of text, :data:`MAX_DEPTH` levels of nesting and
:data:`MAX_NODES` keys and values, counted with every alias expanded (so an alias bomb, "billion laughs",
is refused while it is still a small graph of nodes). A key given twice in one mapping is refused too
(YAML would silently keep the last one).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tfopt.errors import ConfigError

__all__ = ["parse_yaml", "Problems", "format_path", "MAX_BYTES", "MAX_DEPTH", "MAX_NODES"]

MAX_BYTES = 1 << 20  # 1 MiB of recipe text
MAX_DEPTH = 50  # nested mappings / lists
MAX_NODES = 50_000  # keys and values, every alias expanded

_MERGE = "tag:yaml.org,2002:merge"


def format_path(path: tuple) -> str:
    """The key path ``("stages", 2, "prune", "epochs")`` as ``stages[2].prune.epochs``.

    >>> format_path(("stages", 2, "prune", "epochs"))
    'stages[2].prune.epochs'
    """
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(recipe)"


class _Refused(Exception):
    """A recipe past one of the limits (or with a duplicate key), at ``mark``."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.message, self.mark = message, mark


def _too_deep(mark) -> _Refused:
    return _Refused(f"the recipe nests mappings and lists more than {MAX_DEPTH} levels deep (aliases expanded); "
                    f"allowed: at most {MAX_DEPTH} levels", mark)


def _too_many(count, mark) -> _Refused:
    count = f"{count:,}" if isinstance(count, int) else count
    return _Refused(f"the recipe has {count} keys and values (aliases expanded); allowed: at most {MAX_NODES:,}",
                    mark)


try:  # libyaml's parser (events only: nodes are composed in Python, below, within the limits)
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, _Parser):  # noqa: F811
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _Parser.__init__(self)


class _RecipeLoader(yaml.composer.Composer, _Parser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's safe loader (libyaml's parser when present), composing at most MAX_DEPTH levels and MAX_NODES
    nodes (alias references counted)."""

    def __init__(self, text: str):
        _Parser.__init__(self, text)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._open = 0  # collections being composed (the nesting level of the next node)
        self._composed = 0

    def compose_node(self, parent, index):
        self._composed += 1
        if self._composed > MAX_NODES:
            raise _too_many(f"more than {MAX_NODES:,}", self.peek_event().start_mark)
        collection = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if collection and self._open >= MAX_DEPTH:
            raise _too_deep(self.peek_event().start_mark)
        self._open += collection
        try:
            return super().compose_node(parent, index)
        finally:
            self._open -= collection


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_duplicate_keys(node, loader) -> None:
    """Refuse a key given twice among a mapping's own keys (merged ``<<`` keys may be overridden)."""
    seen = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
            continue
        construct = loader.yaml_constructors.get(key.tag)
        try:  # the key as the mapping will hold it (``yes`` and ``true`` are one key), without touching the loader
            value = construct(loader, key) if construct is not None else (key.tag, key.value)
        except Exception:  # noqa: BLE001 - a bad scalar is reported when the recipe is constructed
            value = (key.tag, key.value)
        try:
            first = seen.setdefault(value, key)
        except TypeError:  # unhashable: the constructor reports it
            continue
        if first is not key:
            shown = key.value if isinstance(value, tuple) and value == (key.tag, key.value) else value
            raise _Refused(f"duplicate key {shown!r} (first at line {first.start_mark.line + 1}); "
                           "a key may appear once in a mapping", key.start_mark)


def _check_expansion(root, loader) -> None:
    """Walk the composed node graph once per node, counting the nodes and levels it has with every alias
    expanded (a node reached twice counts twice); refuse cycles, duplicate keys and what passes the limits.

    The walk is iterative and stops as soon as a limit is passed, so it costs at most the size of the graph.
    """
    sizes: dict[int, int] = {}  # id(node) -> nodes under it (itself included), aliases expanded
    heights: dict[int, int] = {}  # id(node) -> levels of mappings and lists from it down (itself included)
    on_path: set[int] = set()
    frames = [(root, iter(_children(root)))]  # the path from the root: one frame per level
    on_path.add(id(root))
    while frames:
        node, children = frames[-1]
        child = next(children, None)
        if child is not None:
            if id(child) in on_path:
                raise _Refused("an alias refers to a mapping or list that contains it (a recursive alias); "
                               "allowed: aliases of finished values only", child.start_mark)
            if not isinstance(child, yaml.CollectionNode):
                continue
            if id(child) in sizes:  # seen before (an alias): its levels count again below this one
                if len(frames) + heights[id(child)] > MAX_DEPTH:
                    raise _too_deep(child.start_mark)
                continue
            if len(frames) >= MAX_DEPTH:
                raise _too_deep(child.start_mark)
            on_path.add(id(child))
            frames.append((child, iter(_children(child))))
            continue
        frames.pop()
        on_path.discard(id(node))
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node, loader)
        size = 1 + sum(sizes.get(id(c), 1) for c in _children(node))
        if size > MAX_NODES:
            raise _too_many(size, node.start_mark)
        sizes[id(node)] = size
        heights[id(node)] = 1 + max((heights.get(id(c), 0) for c in _children(node)), default=0)


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


def _too_long(size: int, source: str) -> ConfigError:
    return ConfigError(f"{source}: the recipe is {size:,} bytes; allowed: at most {MAX_BYTES:,} bytes (1 MiB)")


def parse_yaml(text: str, source: str) -> tuple[object, dict]:
    """Parse recipe ``text`` with PyYAML's safe loader; returns ``(value, {key path: line})``.

    Malformed YAML, an empty document, a duplicate key and a recipe past the limits (:data:`MAX_BYTES`,
    :data:`MAX_DEPTH`, :data:`MAX_NODES`) raise a ConfigError naming ``source`` and the line.

    Args:
        text: String, the recipe's YAML text.
        source: String, the file it came from (for messages).

    >>> value, lines = parse_yaml("a:\\n  b: 1\\n", "x.yaml")
    >>> value, lines[("a", "b")]
    ({'a': {'b': 1}}, 2)
    >>> parse_yaml("a: 1\\nb: 2\\na: 3\\n", "x.yaml")
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: x.yaml:3: duplicate key 'a' (first at line 1); a key may appear once in a mapping
    """
    if len(text) > MAX_BYTES or len(text.encode("utf-8")) > MAX_BYTES:
        raise _too_long(len(text.encode("utf-8")), source)
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, loader)
            value = loader.construct_document(node)
    except _Refused as err:
        where = f"{source}:{err.mark.line + 1}" if err.mark is not None else source
        raise ConfigError(f"{where}: {err.message}") from None
    except (ValueError, TypeError, OverflowError) as err:  # a scalar its constructor refuses, e.g. "!!int abc"
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{source}: malformed YAML: {problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if "maximum nesting depth" in problem:  # libyaml's own limit (1000 levels) came first
            raise ConfigError(f"{where}: {_too_deep(mark).message}") from None
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()
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
    """The text of recipe file ``path`` (at most :data:`MAX_BYTES` are read); ConfigError naming it when it
    cannot be read or is too long."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"recipe file {str(path)!r} does not exist") from None
    except OSError as err:
        raise ConfigError(f"recipe file {str(path)!r} cannot be read: {err}") from None
    if len(data) > MAX_BYTES:
        try:
            size = max(path.stat().st_size, len(data))
        except OSError:
            size = len(data)
        raise _too_long(size, str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"recipe file {str(path)!r} cannot be read: {err}") from None
