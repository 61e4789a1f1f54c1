"""The shape of the source tree: layers that point one way, short functions, declared dependencies.

Read from the source with `ast` (no import runs), so these hold in every CI stage.
"""
import ast
import re
from pathlib import Path

import pytest
import tomllib

pytestmark = pytest.mark.torch_free

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("qvl_compile", "rewrite", "runtime", "export", "families", "golden", "tasks", "training", "serve",
                "cluster")
# Which layers each layer may import. The core package (qvl_compile/ without the CLI) sits at the bottom;
# the registry finds families by importing their package *by name*, so no arrow points up.
ALLOWED = {
    "core": {"core"},
    "rewrite": {"core", "rewrite"},
    "runtime": {"core", "runtime"},
    "export": {"core", "rewrite", "runtime", "export"},
    "families": {"core", "rewrite", "runtime", "export", "families"},
    "tasks": {"core", "tasks"},  # the shapes suite's generator: Pillow and numpy only
    "training": {"core", "rewrite", "runtime", "export", "families", "tasks", "training"},
    "golden": {"core", "rewrite", "runtime", "export", "families", "tasks", "golden"},
    "serve": {"core", "runtime", "serve"},  # the HTTP API over the runtime: torch-free like it
    "cluster": {"core", "runtime", "serve", "cluster"},  # Ray Data / Ray Serve over the runtime and the API
    "cli": {"core", "rewrite", "runtime", "export", "families", "tasks", "golden", "serve", "cluster", "cli"},
}
MAX_FUNCTION_LINES = 60
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"PIL": "pillow", "onnx_ir": "onnx-ir", "onnxconverter_common": "onnxconverter-common",
                 "onnxruntime_genai": "onnxruntime-genai", "yaml": "pyyaml", "prometheus_client": "prometheus-client"}


def source_files(dirs=PACKAGE_DIRS) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def layer_of_module(name: str) -> str | None:
    """'qvl_compile.export.vision' -> 'export'; None for modules outside qvl_compile."""
    parts = name.split(".")
    if parts[0] != "qvl_compile":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] in ("rewrite", "runtime", "export", "families", "golden", "tasks", "training", "serve",
                    "cluster"):
        return parts[1]
    return "cli" if parts[1] == "cli" else "core"


def layer_of_file(path: Path, root: Path = ROOT) -> str:
    top = path.relative_to(root).parts[0]
    if top == "qvl_compile":
        return "cli" if path.name == "cli.py" else "core"
    return top


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module an `import` or `from ... import` in the file names (at any depth), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def layer_violations(paths, root: Path = ROOT) -> list[str]:
    wrong = []
    for path in paths:
        here = layer_of_file(path, root)
        for module, line in imports(path):
            there = layer_of_module(module)
            if there is not None and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(root)}:{line} ({here}) imports {module} ({there})")
    return wrong


def test_layers_point_one_way():
    wrong = layer_violations(source_files())
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_layer_order_has_no_cycle():
    """ALLOWED itself is a partial order: no two layers may import each other."""
    for a, allowed in ALLOWED.items():
        for b in allowed - {a}:
            assert a not in ALLOWED[b], f"{a} and {b} may import each other"


def test_the_layer_check_catches_upward_imports(tmp_path):
    """The check can fail: export importing golden, and the runtime importing export inside a function."""
    (tmp_path / "export").mkdir()
    (tmp_path / "runtime").mkdir()
    (tmp_path / "export" / "a.py").write_text("from qvl_compile.golden.store import DATA_DIR\n")
    (tmp_path / "runtime" / "b.py").write_text("def f():\n    import qvl_compile.export.vision\n")
    wrong = layer_violations(sorted(tmp_path.rglob("*.py")), tmp_path)
    assert wrong == ["export/a.py:1 (export) imports qvl_compile.golden.store (golden)",
                     "runtime/b.py:2 (runtime) imports qvl_compile.export.vision (export)"]


def long_functions(paths) -> list[str]:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_library_function_is_over_60_lines():
    long = long_functions(source_files(PACKAGE_DIRS + ("bench",)))
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _declared() -> dict[str, set[str]]:
    """group ('' for the base dependencies) -> distribution names, lower case."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    def names(specs):
        return {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower() for spec in specs}
    groups = {"": names(project["dependencies"])}
    groups |= {group: names(specs) for group, specs in project["optional-dependencies"].items()}
    return groups


def _third_party_imports(dirs) -> dict[str, str]:
    """distribution -> one place that imports it, for every non-stdlib, non-project import under `dirs`."""
    import sys

    local = {p.stem for d in ("bench", "tests") for p in (ROOT / d).glob("*.py")}  # scripts importing each other
    found = {}
    for path in source_files(dirs):
        for module, line in imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in local or top in ("qvl_compile", "__future__"):
                continue
            found.setdefault(DISTRIBUTIONS.get(top, top).lower(), f"{path.relative_to(ROOT)}:{line}")
    return found


def test_every_import_is_declared_and_every_declared_package_imported():
    declared = _declared()
    all_declared = set().union(*declared.values())
    used = _third_party_imports(PACKAGE_DIRS + ("bench", "tests"))
    undeclared = {dist: where for dist, where in used.items() if dist not in all_declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = all_declared - set(used) - {"ruff", "qvl-compile"}  # a tool (.ci/run lint); an extra naming extras
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"


def test_the_runtime_needs_only_its_own_dependencies():
    """The base dependencies (what the torch-free stage installs) cover every import of the runtime side."""
    base = _declared()[""]
    runtime_side = _third_party_imports(("runtime",))
    core = {dist: where for dist, where in _third_party_imports(("qvl_compile",)).items() if "cli.py" not in where}
    missing = {dist: where for dist, where in (runtime_side | core).items() if dist not in base}
    assert not missing, f"runtime imports outside the base dependencies: {missing}"
