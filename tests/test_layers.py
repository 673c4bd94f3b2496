"""The package's layers only look down: data/models -> train -> compress -> export -> tune -> pipeline -> cli.

Every ``import`` in every tfopt module (at the top or inside a function) is read with ``ast``; a module may
import its own layer or a lower one, never a higher one, and no two modules may import each other in a
circle. The layer of each module is declared here, once; a new module must be placed in it.
"""

from __future__ import annotations

import ast
import pathlib

import tfopt

ROOT = pathlib.Path(tfopt.__file__).parent

# module (or package, meaning every module below it) -> layer; lower layers must not import higher ones
LAYERS = {
    "tfopt.errors": 0, "tfopt._io": 0, "tfopt._faults": 0, "tfopt._lock": 0, "tfopt._registry": 0,
    "tfopt.progress": 0, "tfopt._keras": 0, "tfopt._private": 0, "tfopt.options": 0, "tfopt.techniques": 0,
    "tfopt._model": 0, "tfopt.stats": 0, "tfopt.flops": 0,
    "tfopt.data": 1, "tfopt.models": 1, "tfopt.losses": 1, "tfopt.optimizers": 1, "tfopt.regularizers": 1,
    "tfopt.schedules": 1, "tfopt.distribute": 1, "tfopt.saving": 1, "tfopt.checkpoints": 1,
    "tfopt.train": 2,
    "tfopt.compress": 3,
    "tfopt.export": 4,
    "tfopt.tune": 5,
    # pipeline/ by concern: configuration, then reading run directories and reporting, then running
    "tfopt.pipeline.config": 6.0, "tfopt.pipeline.report": 6.1, "tfopt.pipeline.run": 6.2, "tfopt.pipeline": 6.3,
    "tfopt.demo": 7, "tfopt.cli": 7, "tfopt.__main__": 7, "tfopt": 7,
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The declared layer of ``module``: its own entry or its nearest package's."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def _imports(path: pathlib.Path, modules: set):
    """``(line, tfopt module)`` for every import of a tfopt module in ``path`` (``modules``: every module name)."""
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tfopt")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "tfopt":
                continue
            for alias in node.names:  # `from tfopt import compress` imports the module tfopt.compress
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in modules else base


def _graph() -> dict:
    """module name -> (path, [(line, imported tfopt module)])."""
    paths = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    return {name: (path, list(_imports(path, set(paths)))) for name, path in paths.items()}


def test_every_module_has_a_layer():
    missing = [name for name in _graph() if layer_of(name) is None]
    assert not missing, f"declare the layer of {missing} in tests/test_layers.py LAYERS"


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, (path, imports) in _graph().items():
        if name == "tfopt":
            continue  # the package's __init__ re-exports the public API of every layer
        own = layer_of(name)
        for line, target in imports:
            if target != "tfopt" and layer_of(target) is not None and layer_of(target) > own:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line}: {name} (layer {own}) imports {target} "
                              f"(layer {layer_of(target)})")
    assert not upward, "imports that point up:\n" + "\n".join(dict.fromkeys(upward))


def test_no_import_cycle():
    modules = _graph()
    # edges between modules; a package importing its own submodules (its __init__ re-exporting them) and a
    # submodule importing its package are how Python packages work, not cycles of the design
    graph = {name: {t for _, t in imports if t in modules and t != name and not name.startswith(t + ".")
                    and not t.startswith(name + ".")}
             for name, (_, imports) in modules.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
