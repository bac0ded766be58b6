"""The package's layering (issue 15): no import cycles (module- and function-level imports),
nothing below the engine reaches up into it, weights resolution is a leaf, and no file outside
partformer/methods/ names a method. Read from the source with ``ast``, so the test also fails for
an import that a code path has not run yet."""
from __future__ import annotations

import ast
import os
from typing import Dict, Set

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "partformer")
# layers that must not import the engine, the CLIs, the model-file reader or the predictor
LOWER = ("partformer.models", "partformer.losses", "partformer.methods", "partformer.augment",
         "partformer.data", "partformer.metrics", "partformer.weights", "partformer.statedict",
         "partformer.fileio", "partformer.registry")
UPPER = ("partformer.engine", "partformer.cli", "partformer.hub", "partformer.predictor",
         "partformer.infer")


def _modules() -> Dict[str, str]:
    mods = {}
    root = os.path.dirname(PKG)
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


MODULES = _modules()


def _resolve(name: str):
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Set[str]:
    """The package modules ``module`` imports anywhere in its body (functions included)."""
    path = MODULES[module]
    base = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            b = base
            for _ in range(max(node.level - 1, 0)):
                b = b.rpartition(".")[0]
            mod = (f"{b}.{node.module}" if node.module else b) if node.level else node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            r = _resolve(n) if n.startswith("partformer") else None
            if r and r != module:
                out.add(r)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycles():
    state: Dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_lower_layers_never_import_the_engine_cli_or_model_file_reader():
    bad = sorted(f"{m} -> {n}" for m, deps in GRAPH.items() if _under(m, LOWER)
                 for n in deps if _under(n, UPPER))
    assert bad == []


def test_weights_resolution_is_a_leaf():
    assert GRAPH["partformer.weights"] <= {"partformer.fileio"}
    assert GRAPH["partformer.statedict"] == set()


# words that are also method names but mean something else where they are used
HOMONYMS = {("cli.py", "grid"): "tools/visualize.py --view grid (a mask grid), not the grid method"}


def _method_vocabulary():
    """Names a file would use to refer to a specific method: the registered names, the public
    names each method package defines, and its import paths."""
    from partformer.methods import get_method, method_names
    import importlib
    names = method_names()
    idents = set()
    for n in names:
        pkg = importlib.import_module(f"partformer.methods.{n}")
        # the public names the package defines (not the building blocks it re-exports)
        idents |= {a for a in getattr(pkg, "__all__", ())
                   if getattr(getattr(pkg, a), "__module__", pkg.__name__).startswith(pkg.__name__)}
        idents.add(get_method(n).__name__)
    return names, idents


def test_no_file_outside_methods_names_a_method():
    """The engine, tools, weights loading and the rest talk to the Method interface only: no
    import of a method package, no method class or constant by name, no method name as a string
    compared, used as a key or given to the method registry (``"partformer"`` is also the
    package's name, so it is checked as an import path and a class name only), no
    ``cfg.<method>`` section access."""
    names, idents = _method_vocabulary()
    found = []
    for module, path in MODULES.items():
        if _under(module, ("partformer.methods",)):
            continue
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            where = f"{os.path.relpath(path, os.path.dirname(PKG))}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                hit = [m for m in mods for n in names if m == f"partformer.methods.{n}"
                       or m.startswith(f"partformer.methods.{n}.")]
                if hit:
                    found.append(f"{where}: imports {hit[0]}")
            elif isinstance(node, ast.Name) and node.id in idents:
                found.append(f"{where}: {node.id}")
            elif isinstance(node, ast.Attribute) and (node.attr in idents or (
                    node.attr in names and isinstance(node.value, ast.Name)
                    and node.value.id in ("cfg", "config", "self.cfg"))):
                found.append(f"{where}: .{node.attr}")
            for const in _keyed_strings(node):
                if const.value in names and const.value != "partformer" and \
                        (os.path.relpath(path, PKG), const.value) not in HOMONYMS:
                    found.append(f"{where}: {const.value!r}")
    assert found == []


def _keyed_strings(node):
    """String constants that select something: compared (``name == "kmeans"``), a subscript or
    dict key (``METHODS["kmeans"]``, ``{"kmeans": ...}``), or the name given to the method
    registry (``get_method("kmeans")``)."""
    if isinstance(node, ast.Compare):
        cands = [node.left] + list(node.comparators)
    elif isinstance(node, ast.Subscript):
        cands = [node.slice]
    elif isinstance(node, ast.Dict):
        cands = [k for k in node.keys if k is not None]
    elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) \
            in ("get_method", "build_method", "build_model"):
        cands = list(node.args)
    else:
        return []
    return [c for c in cands if isinstance(c, ast.Constant) and isinstance(c.value, str)]


@pytest.mark.parametrize("rule", ["cycle", "layer", "names"])
def test_the_checks_catch_what_they_are_for(rule, tmp_path, monkeypatch):
    """Each check fails on a planted violation (so the checks above are not vacuous)."""
    if rule == "cycle":
        g = {"a": {"b"}, "b": {"a"}}
        monkeypatch.setattr(__import__(__name__), "GRAPH", g, raising=False)
        monkeypatch.setitem(globals(), "GRAPH", g)
        with pytest.raises(AssertionError):
            test_no_import_cycles()
    elif rule == "layer":
        g = dict(GRAPH)
        g["partformer.models.encoder"] = GRAPH["partformer.models.encoder"] | {"partformer.hub"}
        monkeypatch.setitem(globals(), "GRAPH", g)
        with pytest.raises(AssertionError):
            test_lower_layers_never_import_the_engine_cli_or_model_file_reader()
    else:
        planted = tmp_path / "planted.py"
        planted.write_text("x = cfg.partformer\nif name == 'kmeans':\n    pass\n")
        mods = dict(MODULES)
        mods["partformer.planted"] = str(planted)
        monkeypatch.setitem(globals(), "MODULES", mods)
        with pytest.raises(AssertionError, match="planted"):
            test_no_file_outside_methods_names_a_method()
