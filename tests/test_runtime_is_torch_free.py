"""runtime/ never loads torch or transformers: checked in a fresh interpreter and by a source lint."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch_free

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "transformers", "qvl_compile.export", "qvl_compile.rewrite", "qvl_compile.golden")


def test_importing_runtime_loads_no_torch():
    code = (
        "import sys, qvl_compile, qvl_compile.runtime, qvl_compile.config, qvl_compile.manifest, qvl_compile.cli\n"
        "import qvl_compile.runtime.pipeline, qvl_compile.runtime.video, qvl_compile.golden.store, av\n"
        "import qvl_compile.contract, qvl_compile.parity, qvl_compile.registry\n"
        "assert qvl_compile.registry.family_named('qwen3_vl').name == 'qwen3_vl'  # the runtime's family lookup\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_runtime_sources_import_nothing_from_the_export_side():
    files = sorted((ROOT / "runtime").glob("*.py")) + [ROOT / "qvl_compile" / n for n in
                                                        ("config.py", "manifest.py", "errors.py", "__init__.py", "contract.py",
                                                         "parity.py", "registry.py", "jsonfile.py")]
    files.append(ROOT / "golden" / "store.py")  # the goldens are read in the torch-free stage
    offenders = {f"{path.name}: {name}" for path in files for name in _imports(path)
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not offenders
