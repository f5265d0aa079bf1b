"""The layering rule of the design: processing/ is pure and never reaches into the runtime.

Checked two ways: statically (no import statement of a forbidden package anywhere in
processing/), and dynamically (importing every processing module in a fresh interpreter loads
none of them, not even indirectly through a dependency).
"""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import processing

FORBIDDEN = ("agent", "zmq", "watchdog", "rich", "distributed")
ROOT = Path(processing.__file__).parent


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_processing_module_imports_the_runtime():
    offending = [
        f"{path.relative_to(ROOT.parent)}: {name}"
        for path in ROOT.rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith("dask.distributed")
    ]
    assert not offending, offending


def test_importing_processing_loads_none_of_the_runtime():
    modules = [m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="processing.")]
    assert {"processing.chain", "processing.metrics", "processing.rev"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "[]", out.stdout
