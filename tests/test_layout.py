"""The library's layout: no import circles (function-local imports included),
no ``importlib`` between our modules, no imports of another module's private
names, no module much over 400 lines, no function over 80 lines or 8
parameters, and no development history in the project's text."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MAX_LINES = 400
#: a function read on one screen: def line to last line, docstring included
MAX_FUNCTION_LINES = 80
#: parameters of a function, self or cls left out
MAX_PARAMETERS = 8


def _name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted((SRC / "negatives").rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports(module: str) -> list[tuple[str, str, int]]:
    """``(target module, imported name, line)`` for every import of our own
    modules in ``module``, at any depth (function-local ones too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("negatives"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("negatives"):
                    out.append((alias.name, alias.name, node.lineno))
    return out


def test_the_walk_sees_every_kind_of_import():
    edges = {target for target, _, _ in imports("negatives.cli")}
    # cli imports its commands inside functions; the walk must see them
    assert {"negatives.training.pretrain", "negatives.analysis.figures", "negatives.runtime.memory"} <= edges
    assert all(target in MODULES for m in MODULES for target, _, _ in imports(m)), "an import of a missing module"


def test_no_import_circle():
    graph = {m: sorted({t for t, _, _ in imports(m) if t != m}) for m in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                circle = path[path.index(t):] + [t]
                pytest.fail("import circle: " + " -> ".join(circle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_the_circle_check_can_fail(monkeypatch):
    """The check itself: a made-up edge back to a module that imports it is found."""
    real = imports

    def with_back_edge(module):
        extra = [("negatives.methods.moco", "MoCo", 0)] if module == "negatives.policies.selection" else []
        return real(module) + extra

    monkeypatch.setitem(globals(), "imports", with_back_edge)
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()


def test_no_importlib_and_no_private_names_across_modules():
    found = []
    for module, path in MODULES.items():
        text = path.read_text()
        if re.search(r"\bimportlib\b|__import__\(", text):
            found.append(f"{module}: importlib or __import__")
        for target, name, line in imports(module):
            if name.startswith("_") and target != module:
                found.append(f"{module}:{line} imports {target}.{name}")
    assert not found, found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_much_over_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concept"


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter of ``node`` (keyword-only ones, ``*args`` and
    ``**kwargs`` one each) but a first positional one named self or cls."""
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    bound = 1 if positional and positional[0].arg in ("self", "cls") else 0
    return len(positional) - bound + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def long_or_wide_functions(paths) -> list[str]:
    """``path:line name (N lines / N params)`` for every function or method
    (nested ones too) in ``paths`` longer than :data:`MAX_FUNCTION_LINES` or
    with more than :data:`MAX_PARAMETERS` parameters, in file and line order."""
    found = []
    for path in map(Path, paths):
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        tree = ast.parse(path.read_text())
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in sorted(defs, key=lambda n: n.lineno):
            lines, params = node.end_lineno - node.lineno + 1, parameter_count(node)
            if lines > MAX_FUNCTION_LINES or params > MAX_PARAMETERS:
                found.append(f"{where}:{node.lineno} {node.name} ({lines} lines / {params} params)")
    return found


def test_no_function_over_80_lines_or_8_parameters():
    found = long_or_wide_functions(MODULES.values())
    print("\n".join(found))
    assert not found, "split these or give them fewer parameters:\n" + "\n".join(found)


def test_the_function_check_counts_lines_and_parameters(tmp_path):
    """The check itself, on a made-up module: the limits are inclusive, self
    and cls are free, keyword-only parameters, *args and **kwargs count, and
    methods and nested functions are seen."""
    source = ["def eighty():", *[f"    x = {i}" for i in range(79)],             # lines 1-80
              "def eighty_one():", *[f"    x = {i}" for i in range(80)],         # lines 81-161
              "class C:",
              "    def eight(self, a, b, c, d, e, f, g, h): pass",
              "    @classmethod",
              "    def nine(cls, a, b, c, d, e, f, g, *, h, i): pass",               # line 165
              "def nine_with_stars(a, b, c, d, e, f, g, *args, **kwargs):",
              "    def inner(a, b, c, d, e, f, g, h, i): pass",
              "def eight_alone(a, b, /, c, d, e, f, *, g, h): pass"]
    path = tmp_path / "made_up.py"
    path.write_text("\n".join(source) + "\n")
    assert long_or_wide_functions([path]) == [
        f"{path}:81 eighty_one (81 lines / 0 params)", f"{path}:165 nine (1 lines / 9 params)",
        f"{path}:166 nine_with_stars (2 lines / 9 params)", f"{path}:167 inner (1 lines / 9 params)"]


def test_the_project_speaks_of_the_product_not_its_history():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").glob("*")),
             *MODULES.values(), *sorted((ROOT / "workflow").rglob("*.smk")), ROOT / "Snakefile", ROOT / "config.yaml"]
    history = re.compile(r"\bissues? #?\d+|\bthis session\b|\bsessions? \d|\bin this PR\b", re.IGNORECASE)
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in files if p.is_file() and p.suffix != ".pyc"
            for m in history.finditer(p.read_text(errors="ignore"))]
    assert not hits, hits


def test_settings_classes_take_every_default_from_the_schema():
    """One source of defaults: each settings class has exactly the schema's keys
    (plus documented library-only ones) and the schema's default for each."""
    import dataclasses

    import yaml

    from negatives.analysis.pairs import ANALYSIS_DEFAULTS
    from negatives.defaults import SCHEMA, schema_defaults
    from negatives.evaluation.faithful import FaithfulSettings
    from negatives.training.settings import PretrainSettings

    assert SCHEMA.resolve() == (ROOT / "workflow" / "schemas" / "config.schema.yaml").resolve()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for cls, section, library_only in ((PretrainSettings, ("pretrain",), {"max_steps"}),
                                       (FaithfulSettings, ("evaluate", "faithful"), set())):
        schema = schema_defaults(*section)
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert set(fields) - library_only == set(schema), cls
        for key, value in schema.items():
            assert fields[key] == (tuple(value) if isinstance(value, list) else value), (cls, key)
    assert {k: ANALYSIS_DEFAULTS[k] for k in schema_defaults("analysis")} == schema_defaults("analysis")
    # config.yaml, the user's copy, says what the schema says wherever it sets a schema key of pretrain
    for key, value in config["pretrain"].items():
        assert key in schema_defaults("pretrain"), key


def _public(packages=("losses", "policies", "methods", "queue", "models")):
    import importlib
    import inspect

    for module in sorted(MODULES):
        if module.split(".")[1:2] and module.split(".")[1] in packages:
            mod = importlib.import_module(module)
            for name in getattr(mod, "__all__", []):
                obj = getattr(mod, name)
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module:
                    yield module, name, inspect.getdoc(obj)


def test_every_public_function_and_class_of_the_science_opens_with_a_one_line_summary():
    bad = []
    for module, name, doc in _public():
        lines = (doc or "").splitlines()
        if not lines or (len(lines) > 1 and lines[1].strip()) or not lines[0].rstrip().endswith("."):
            bad.append(f"{module}.{name}: {lines[0] if lines else 'no docstring'}")
    assert not bad, bad


def test_the_examples_in_the_docstrings_run():
    import doctest
    import importlib

    attempted = 0
    for module in sorted(MODULES):
        if module.endswith("__main__"):
            continue
        result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module
        attempted += result.attempted
    assert attempted >= 20


def test_the_probes_the_library_runs_are_the_schemas():
    from negatives.defaults import schema
    from negatives.evaluation.probes import PROBES

    assert list(PROBES) == schema()["properties"]["evaluate"]["properties"]["probe"]["enum"]
