"""The library's layout: no import circles between modules or between
packages (function-local and ``TYPE_CHECKING`` imports included),
no ``importlib`` between our modules (``importlib.metadata`` in the policy
registry only), no imports of another module's private names, no module
much over 400 lines, no function over 80 lines or 8 parameters, and no
development history in the project's text."""

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


def modules_under(src: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the ``negatives`` package under ``src``."""

    def name(path: Path) -> str:
        parts = path.relative_to(src).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name(p): p for p in sorted((src / "negatives").rglob("*.py"))}


MODULES = modules_under(SRC)


def imports(module: str, modules: dict[str, Path] | None = None) -> list[tuple[str, str, int]]:
    """``(target module, imported name, line)`` for every import of our own
    modules in ``module``, at any depth: function-local ones, and those under
    ``if TYPE_CHECKING:`` (never run, but a circle the type checker follows
    is a circle of the design all the same)."""
    modules = MODULES if modules is None else modules
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level > len(parts):  # above negatives: Python refuses it; name it as a missing module
                    out.append(("." * node.level + (node.module or ""), "", node.lineno))
                    continue
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("negatives"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in modules else base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("negatives"):
                    out.append((alias.name, alias.name, node.lineno))
    return out


def package_of(module: str) -> str:
    """A module's node in the package graph: its subpackage of ``negatives``
    (``negatives.training`` for ``negatives.training.pretrain``); a top-level
    module, and ``negatives`` itself, is its own node."""
    return ".".join(module.split(".")[:2])


def import_graph(modules: dict[str, Path], node=lambda module: module) -> dict[str, dict[str, list[str]]]:
    """``{node: {node it imports: the import lines that make the edge}}``, a
    node's edges being the union of its modules' imports (those within the
    node left out)."""
    edges: dict[str, dict[str, set]] = {node(m): {} for m in modules}
    for m in modules:
        for target, _, line in imports(m, modules):
            if node(target) != node(m):
                edges[node(m)].setdefault(node(target), set()).add((m, line, target))
    return {
        a: {b: [f"{m}:{line} imports {target}" for m, line, target in sorted(why)] for b, why in out.items()}
        for a, out in edges.items()
    }


def circles(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """One readable line per circle a depth-first walk meets (each closing
    edge gives one; at least one per knot), the circle starting at its
    smallest node, with the import lines that make each of its edges."""
    state: dict[str, int] = {}
    path: list[str] = []
    found: dict[tuple[str, ...], str] = {}

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for t in sorted(graph.get(n, {})):  # a missing module has no node: the walk test names it
            if state.get(t) == 1:
                loop = path[path.index(t) :]
                first = loop.index(min(loop))
                loop = loop[first:] + loop[:first]
                edges = zip(loop, loop[1:] + loop[:1])
                found[tuple(loop)] = (
                    " -> ".join(loop + loop[:1]) + " (" + "; ".join(", ".join(graph[a][b]) for a, b in edges) + ")"
                )
            elif t not in state:
                visit(t)
        path.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return [found[k] for k in sorted(found)]


def test_the_walk_sees_every_kind_of_import():
    edges = {target for target, _, _ in imports("negatives.cli")}
    # cli imports its commands inside functions; the walk must see them
    assert {"negatives.training.pretrain", "negatives.figure_registry", "negatives.runtime.memory"} <= edges
    assert all(target in MODULES for m in MODULES for target, _, _ in imports(m)), "an import of a missing module"


def test_no_import_circle_between_modules():
    found = circles(import_graph(MODULES))
    if found:
        pytest.fail("\n".join(f"import circle: {line}" for line in found), pytrace=False)


def test_no_import_circle_between_packages():
    """The subpackages of ``negatives`` and its top-level modules import one
    another one way only: a layering, read from the bottom up."""
    found = circles(import_graph(MODULES, package_of))
    if found:
        pytest.fail("\n".join(f"package import circle: {line}" for line in found), pytrace=False)


#: a made-up ``negatives`` with no circle: two packages and a top-level module,
#: ``high`` over ``top`` over ``low``
CLEAN = {
    "__init__.py": "",
    "top.py": "from .low.base import Base\n",
    "low/__init__.py": "",
    "low/base.py": "from __future__ import annotations\n\n\nclass Base:\n    pass\n",
    "low/util.py": "from .base import Base\n",
    "high/__init__.py": "",
    "high/other.py": "x = 1\n",
    "high/run.py": "from ..low.util import Base\nfrom .. import top\n\n\ndef f():\n    from ..low import base\n",
}
#: one file of CLEAN changed, and the circle the checks then report
PLANTED = {
    "a function-local import": (
        "low/base.py",
        "class Base:\n    def f(self):\n        from .util import Base\n",
        (
            "negatives.low.base -> negatives.low.util -> negatives.low.base (negatives.low.base:3 imports "
            "negatives.low.util; negatives.low.util:1 imports negatives.low.base)"
        ),
        None,
    ),
    "an import under TYPE_CHECKING": (
        "low/base.py",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .util import Base\n",
        (
            "negatives.low.base -> negatives.low.util -> negatives.low.base (negatives.low.base:4 imports "
            "negatives.low.util; negatives.low.util:1 imports negatives.low.base)"
        ),
        None,
    ),
    "packages whose modules make no circle": (
        "low/util.py",
        "from .base import Base\n\n\ndef g():\n    from ..high.other import x\n",
        None,
        (
            "negatives.high -> negatives.low -> negatives.high (negatives.high.run:1 imports negatives.low.util, "
            "negatives.high.run:6 imports negatives.low.base; negatives.low.util:5 imports negatives.high.other)"
        ),
    ),
    "a package and a top-level module": (
        "low/util.py",
        "from .base import Base\nimport negatives.top\n",
        None,
        (
            "negatives.low -> negatives.top -> negatives.low (negatives.low.util:2 imports negatives.top; "
            "negatives.top:1 imports negatives.low.base)"
        ),
    ),
}


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        (tmp_path / "negatives" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "negatives" / name).write_text(text)
    return modules_under(tmp_path)


def test_the_circle_checks_pass_a_tree_without_circles(tmp_path):
    modules = _tree(tmp_path, CLEAN)
    assert import_graph(modules, package_of) == {
        "negatives": {},
        "negatives.top": {"negatives.low": ["negatives.top:1 imports negatives.low.base"]},
        "negatives.low": {},
        "negatives.high": {
            "negatives.low": [
                "negatives.high.run:1 imports negatives.low.util",
                "negatives.high.run:6 imports negatives.low.base",
            ],
            "negatives.top": ["negatives.high.run:2 imports negatives.top"],
        },
    }
    assert circles(import_graph(modules)) == circles(import_graph(modules, package_of)) == []


@pytest.mark.parametrize("plant", sorted(PLANTED))
def test_the_circle_checks_find_a_planted_circle(tmp_path, monkeypatch, plant):
    """Each kind of circle, planted in a made-up tree, is found by the real
    walk and reported in one line; the real tests fail on it."""
    name, text, module_circle, package_circle = PLANTED[plant]
    modules = _tree(tmp_path, {**CLEAN, name: text})
    assert circles(import_graph(modules)) == ([module_circle] if module_circle else [])
    if package_circle:
        assert circles(import_graph(modules, package_of)) == [package_circle]
    monkeypatch.setitem(globals(), "MODULES", modules)
    for test, circle in (
        (test_no_import_circle_between_modules, module_circle),
        (test_no_import_circle_between_packages, package_circle),
    ):
        if circle:
            with pytest.raises(pytest.fail.Exception, match=re.escape(circle)):
                test()
        else:
            test()


#: the one module that reads installed packages' entry points (policy plugins), through importlib.metadata only
METADATA_READER = "negatives.policies.registry"


def test_no_importlib_and_no_private_names_across_modules():
    found = []
    for module, path in MODULES.items():
        text = path.read_text()
        if module == METADATA_READER:
            text = text.replace("importlib.metadata", "")
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
    source = [
        "def eighty():",
        *[f"    x = {i}" for i in range(79)],  # lines 1-80
        "def eighty_one():",
        *[f"    x = {i}" for i in range(80)],  # lines 81-161
        "class C:",
        "    def eight(self, a, b, c, d, e, f, g, h): pass",
        "    @classmethod",
        "    def nine(cls, a, b, c, d, e, f, g, *, h, i): pass",  # line 165
        "def nine_with_stars(a, b, c, d, e, f, g, *args, **kwargs):",
        "    def inner(a, b, c, d, e, f, g, h, i): pass",
        "def eight_alone(a, b, /, c, d, e, f, *, g, h): pass",
    ]
    path = tmp_path / "made_up.py"
    path.write_text("\n".join(source) + "\n")
    assert long_or_wide_functions([path]) == [
        f"{path}:81 eighty_one (81 lines / 0 params)",
        f"{path}:165 nine (1 lines / 9 params)",
        f"{path}:166 nine_with_stars (2 lines / 9 params)",
        f"{path}:167 inner (1 lines / 9 params)",
    ]


def test_the_project_speaks_of_the_product_not_its_history():
    files = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "benchmarks").glob("*")),
        *MODULES.values(),
        *sorted((ROOT / "workflow").rglob("*.smk")),
        ROOT / "Snakefile",
        ROOT / "config.yaml",
    ]
    history = re.compile(r"\bissues? #?\d+|\bthis session\b|\bsessions? \d|\bin this PR\b", re.IGNORECASE)
    hits = [
        f"{p.relative_to(ROOT)}: {m.group(0)!r}"
        for p in files
        if p.is_file() and p.suffix != ".pyc"
        for m in history.finditer(p.read_text(errors="ignore"))
    ]
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
    for cls, section, library_only in (
        (PretrainSettings, ("pretrain",), {"max_steps"}),
        (FaithfulSettings, ("evaluate", "faithful"), set()),
    ):
        schema = schema_defaults(*section)
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert set(fields) - library_only == set(schema), cls
        for key, value in schema.items():
            assert fields[key] == (tuple(value) if isinstance(value, list) else value), (cls, key)
    assert {k: ANALYSIS_DEFAULTS[k] for k in schema_defaults("analysis")} == schema_defaults("analysis")
    # config.yaml, the user's copy, says what the schema says wherever it sets a schema key of pretrain
    for key in config["pretrain"]:
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


#: the files a reader opens to follow one MoCo step with a band policy, from
#: MoCo.forward to the back-propagated number: the method, the queue, the policy, the loss
ONE_STEP = [
    "methods/moco.py",
    "methods/base.py",
    "queues/fifo.py",
    "policies/base.py",
    "policies/candidates.py",
    "policies/bands.py",
    "losses/info_nce.py",
]


def test_one_moco_step_with_a_band_policy_reads_in_at_most_700_lines():
    lines = {f: len((SRC / "negatives" / f).read_text().splitlines()) for f in ONE_STEP}
    assert sum(lines.values()) <= 700, lines


def test_the_loss_is_one_call_from_forward():
    # MoCo.forward and SimCLR.forward return what self.loss returns: the scalar is one call away
    for path in ("methods/moco.py", "methods/simclr.py"):
        tree = ast.parse((SRC / "negatives" / path).read_text())
        forward = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward")
        calls = [
            n
            for n in ast.walk(forward)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "loss"
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id == "self"
        ]
        assert len(calls) == 1, path


#: every public science object: the losses, the policies, the methods, the queues
SCIENCE = [
    "negatives.losses.info_nce:info_nce",
    "negatives.losses.reweighted:reweighted_nce",
    "negatives.policies.bands:Band",
    "negatives.policies.classes:ClassFilter",
    "negatives.policies.replace:Replace",
    "negatives.policies.mixing:MoCHi",
    "negatives.policies.ring:Ring",
    "negatives.policies.ring:Curriculum",
    "negatives.methods.moco:MoCo",
    "negatives.methods.simclr:SimCLR",
    "negatives.queues.fifo:KeyQueue",
    "negatives.queues.retaining:RetainingQueue",
]


@pytest.mark.parametrize("target", SCIENCE)
def test_each_science_object_says_its_paper_its_arguments_and_shows_an_example(target):
    import importlib as modules  # the test imports the objects to read their docstrings

    module, name = target.split(":")
    doc = getattr(modules.import_module(module), name).__doc__ or ""
    lines = doc.splitlines()
    assert lines and lines[0].rstrip().endswith("."), f"{target}: no one-line summary"
    assert re.search(r"[A-Z][a-z]+ et al\.,? (19|20)\d\d, arXiv:\d{4}\.\d{4,5}", doc), (
        f"{target}: no paper (authors, year, arXiv id)"
    )
    assert "Args:" in doc, f"{target}: no Args"
    if ".queues." not in module:  # a queue is not called: its methods say what they return
        assert "Returns:" in doc or "Called with" in doc, f"{target}: no Returns"
    assert re.search(r"\[[BK][,\]]", doc), f"{target}: no shapes"
    assert ">>> " in doc, f"{target}: no example"


def private_fields_in_assertions(root: Path) -> list[str]:
    """``path:line .name`` for every ``assert`` of a test that reads an attribute with a leading underscore."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                found += [
                    f"{path.relative_to(root)}:{node.lineno} .{a.attr}"
                    for a in ast.walk(node)
                    if isinstance(a, ast.Attribute) and a.attr.startswith("_") and not a.attr.startswith("__")
                ]
    return found


def test_no_test_asserts_on_a_private_field():
    assert not private_fields_in_assertions(ROOT / "tests")


def test_the_private_field_check_can_fail(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x(sel):\n    assert sel._keep is None\n    assert sel.__class__\n")
    assert private_fields_in_assertions(tmp_path) == ["test_x.py:2 ._keep"]


def test_the_tests_are_laid_out_like_the_library():
    # a test file sits in the folder of the package it tests (tests/policies/ for negatives.policies, ...);
    # the top-level modules' and the house's tests at the top
    packages = {p.name for p in (SRC / "negatives").iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= packages | {"models", "workflow", "benchmarks"}, folders - packages
    assert {"policies", "losses", "methods", "queues", "training", "workflow"} <= folders
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), "two test files of one name"  # they import one another by name
