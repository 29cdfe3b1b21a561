"""Architecture rules that hold for the whole package: no import cycle, small modules.

**What counts as an import.** Only imports that run when a module is first imported: the
module's top-level statements, including those nested in top-level ``if`` / ``try`` /
``with`` blocks and class bodies. An import inside a function runs later, on call, and an
import under ``if TYPE_CHECKING:`` never runs; neither counts. Relative imports are resolved
against the importing module's package.

**Edges.** ``import a.b.c`` and ``from a.b.c import x`` give an edge to ``a.b.c`` and, because
Python initialises every package on the way, to ``a.b`` and ``a``; ``from a.b import c`` adds
``a.b.c`` when ``c`` is a submodule. The one exception is a package that *contains* the
importing module: Python has already started initialising it before the submodule runs (that
is how ``pkg/__init__.py`` importing ``pkg.sub`` works), so ``pkg.sub`` importing
``pkg.other`` is not an edge back to ``pkg``. An explicit ``from pkg import name`` in
``pkg.sub`` *is* an edge to ``pkg``: it reads a name that ``pkg/__init__.py`` may not have
defined yet, which is the cycle that breaks depending on import order.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
# Modules owned by another change in flight (the scan hot path); each entry names its reason.
OVER_LIMIT_ALLOWED: dict[str, str] = {}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (a directory under ``root``) by dotted name."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(body: list[ast.stmt]):
    """Import statements that run when the module is imported (see the module docstring)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_imports(node.body)
            yield from _import_time_imports(node.orelse)
        elif isinstance(node, ast.ClassDef):
            yield from _import_time_imports(node.body)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_imports(block)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _import_time_imports(node.body)


def _every_import(body: list[ast.stmt]):
    """Every import statement, inside functions too (what a call can import, not only what import time does)."""
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def import_graph(root: Path, package: str, everywhere: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` that importing it imports first (``everywhere``: or any of its
    functions imports)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        own_package = name if is_pkg else name.rpartition(".")[0]
        containing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets: set[str] = set()

        def add(target: str) -> None:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix not in containing:
                    targets.add(prefix)

        for node in (_every_import if everywhere else _import_time_imports)(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
                    if everywhere and alias.name == package:
                        # `import probekit` inside a function: the module reaches the whole public API through
                        # the package root (a dependency on the top layer, though not an import-order hazard)
                        targets.add(package)
                continue
            if node.level:
                base = own_package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == package or source.startswith(package + ".")):
                continue
            add(source)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    add(f"{source}.{alias.name}")
                elif source in containing and source in modules:
                    # `from pkg import name` inside pkg: reads pkg's namespace mid-initialisation
                    targets.add(source)
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a closed path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_finds_a_planted_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "fake/__init__.py": "from .a import f\n",
            "fake/a.py": "from . import b\n\ndef f():\n    return b\n",
            "fake/b.py": "from fake.sub.c import g\n",
            "fake/sub/__init__.py": "",
            "fake/sub/c.py": "import fake.a\n\ndef g():\n    pass\n",
        },
    )
    cycle = find_cycle(import_graph(tmp_path, "fake"))
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"fake.a", "fake.b", "fake.sub.c"}


def test_checker_ignores_lazy_type_checking_and_own_package(tmp_path):
    _write(
        tmp_path,
        {
            # the package importing its submodules, which import each other through it
            "fake/__init__.py": "from .a import f\nfrom .b import g\n",
            "fake/a.py": (
                "from typing import TYPE_CHECKING\nimport fake.b\n"
                "if TYPE_CHECKING:\n    from fake.c import h\n"
            ),
            "fake/b.py": "def g():\n    from fake.a import f\n    return f\n",
            "fake/c.py": "from .a import f\n",
        },
    )
    graph = import_graph(tmp_path, "fake")
    assert graph["fake"] == {"fake.a", "fake.b"}
    assert graph["fake.a"] == {"fake.b"}  # fake itself is mid-initialisation; c is type-only
    assert graph["fake.b"] == set()  # the import inside g runs on call
    assert find_cycle(graph) is None


def test_checker_counts_reading_names_from_own_package(tmp_path):
    _write(
        tmp_path,
        {
            "fake/__init__.py": "from .a import f\n",
            "fake/a.py": "from fake import g\n\ndef f():\n    pass\n",
        },
    )
    assert find_cycle(import_graph(tmp_path, "fake")) == ["fake", "fake.a", "fake"]


def test_checker_counts_foreign_package_init(tmp_path):
    # importing x.y runs x/__init__.py, which imports back into the importer
    _write(
        tmp_path,
        {
            "fake/__init__.py": "",
            "fake/p/__init__.py": "from .m import f\n",
            "fake/p/m.py": "from fake.q.n import g\n\ndef f():\n    pass\n",
            "fake/q/__init__.py": "from .r import h\n",
            "fake/q/n.py": "def g():\n    pass\n",
            "fake/q/r.py": "from fake.p.m import f\nh = f\n",
        },
    )
    cycle = find_cycle(import_graph(tmp_path, "fake"))
    assert cycle is not None and {"fake.p.m", "fake.q", "fake.q.r"} <= set(cycle)


def test_no_import_cycle_in_probekit():
    graph = import_graph(ROOT, "probekit")
    assert len(graph) > 50  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The import cycles as strongly connected components of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_checker_with_imports_inside_functions_finds_the_lazy_cycle(tmp_path):
    _write(tmp_path, {"fake/__init__.py": "", "fake/a.py": "def f():\n    from fake.b import g\n",
                      "fake/b.py": "from fake.a import f\n\ndef g():\n    pass\n"})
    assert find_cycle(import_graph(tmp_path, "fake")) is None
    assert strongly_connected(import_graph(tmp_path, "fake", everywhere=True)) == [{"fake.a", "fake.b"}]


def test_no_import_cycle_counting_imports_inside_functions():
    """With imports inside functions counted too, the package has no cycle (issue 26 removed the last four)."""
    found = strongly_connected(import_graph(ROOT, "probekit", everywhere=True))
    assert found == [], f"import cycles (imports inside functions counted): {[sorted(c) for c in found]}"


# The layers, lowest first. A module imports only its own package and the layers below its own (imports inside
# functions counted): the statistics never reach a model, steering draws no report figure (report reads steering's
# results), the shared organisms import no study, and each study is one folder that imports no other study.
LAYERS: list[set[str]] = [
    {"errors", "_version"},
    {"_progress", "_stats", "files", "params"},
    {"data", "models"},
    {"tiny", "hooks"},
    {"sae"},
    {"readout"},
    {"steering", "report"},
    {"membership", "scan"},
    {"organisms"},
    {"studies"},  # the protocol and registry (studies/__init__, base, printout, calibration)
    {"studies.*"},  # one folder per study
    {"demo", "cli_membership"},
    {"<root>"},  # the public API (probekit.scan, probekit.load, ...): nothing inside probekit reads it but the CLI
    {"cli"},
]


def layer_unit(module: str) -> str:
    """The package a module belongs to for the layer rules (a study folder is its own unit)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "<root>"
    if parts[1] == "studies" and len(parts) > 2 and (ROOT / "probekit" / "studies" / parts[2]).is_dir():
        return "studies." + parts[2]
    return parts[1]


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units or (unit.startswith("studies.") and "studies.*" in units):
            return i
    raise AssertionError(f"{unit} is in no layer of LAYERS: add it")


def layer_breaks(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for a, targets in graph.items():
        ua = layer_unit(a)
        for t in targets:
            ut = layer_unit(t)
            if ua != ut and _layer(ut) >= _layer(ua):
                out.append(f"{a} ({ua}) -> {t} ({ut})")
    return sorted(out)


def test_checker_finds_a_planted_layer_break():
    graph = {"probekit.steering.fit": {"probekit.report.figures"}, "probekit.studies.watermark.dose":
             {"probekit.studies.unlearning.removal"}, "probekit.report.pages": {"probekit.readout.table"}}
    assert layer_breaks(graph) == [
        "probekit.steering.fit (steering) -> probekit.report.figures (report)",
        "probekit.studies.watermark.dose (studies.watermark) -> probekit.studies.unlearning.removal (studies.unlearning)"]


def test_importing_the_package_root_inside_a_function_counts_with_everywhere(tmp_path):
    _write(tmp_path, {"fake/__init__.py": "from .a import f\n", "fake/a.py": "def f():\n    import fake\n    return fake\n"})
    assert import_graph(tmp_path, "fake")["fake.a"] == set()  # not an import-order hazard
    assert import_graph(tmp_path, "fake", everywhere=True)["fake.a"] == {"fake"}  # but a dependency on the root


def test_no_layer_imports_a_higher_one_and_no_study_another():
    graph = import_graph(ROOT, "probekit", everywhere=True)
    assert layer_breaks(graph) == []
    studies = {layer_unit(m) for m in graph if layer_unit(m).startswith("studies.")}
    assert {"studies.ladder", "studies.watermark", "studies.unlearning", "studies.memorization"} <= studies


def test_modules_are_small():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in module_names(ROOT, "probekit").values()
    }
    too_long = {rel: n for rel, n in sizes.items() if n > MAX_LINES and rel not in OVER_LIMIT_ALLOWED}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"
    stale = [rel for rel in OVER_LIMIT_ALLOWED if sizes.get(rel, 0) <= MAX_LINES]
    assert not stale, f"no longer over the limit, drop from OVER_LIMIT_ALLOWED: {stale}"


def test_hook_points_import_without_torch():
    """``probekit.hooks`` loads its names on first use: the Point value type needs no torch."""
    code = (
        "import sys, types\nimport probekit.hooks.points\nassert 'torch' not in sys.modules, 'torch loaded'\n"
        "import probekit.hooks.collect, probekit.hooks as h\n"
        "assert isinstance(h.collect, types.FunctionType), h.collect\n"  # the function, not the submodule
        "from probekit.hooks import ActivationStore, PositionContext, Recorder, collect, normalize_positions, select\n"
        "from probekit.hooks import distributed\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
