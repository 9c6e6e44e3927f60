"""The harness measures, the report renders: ``frameworks/`` imports nothing
from ``common/report/`` (its record schemas and command lines are the
harness's), and ``common/harness/`` draws nothing (no plotting library, no
report module, no markdown table). ``common/`` imports no framework."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORK_MODULES = ("jax", "jaxlib", "flax", "optax", "jax_privacy", "torch", "opacus", "tensorflow",
                     "tensorflow_privacy", "keras", "frameworks")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (lazy imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def strings(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def violations(root: Path) -> list[str]:
    bad = []
    for p in sorted((root / "frameworks").rglob("*.py")):
        bad += [f"{p.relative_to(root)} imports {m}" for m in imports(p) if m.startswith("common.report")]
    for p in sorted((root / "common" / "harness").rglob("*.py")):
        bad += [f"{p.relative_to(root)} imports {m}" for m in imports(p)
                if m.startswith(("common.report", "matplotlib", "pandas"))]
        bad += [f"{p.relative_to(root)} renders a markdown table" for s in strings(p) if "|---" in s][:1]
    for p in sorted((root / "common").rglob("*.py")):
        bad += [f"{p.relative_to(root)} imports {m}" for m in imports(p) if m.split(".")[0] in FRAMEWORK_MODULES]
    return bad


def test_the_harness_measures_and_the_report_renders():
    assert violations(ROOT) == []


@pytest.mark.parametrize("where, text, found", [
    ("frameworks/x/analysis.py", "from common.report.analysis import cli\n", "imports common.report.analysis"),
    ("frameworks/x/lazy.py", "def f():\n    import common.report.layer_timing\n", "imports common.report.layer_timing"),
    ("common/harness/draw.py", "def f():\n    import matplotlib.pyplot as plt\n", "imports matplotlib.pyplot"),
    ("common/harness/table.py", "HEAD = '| a | b |\\n|---|---|'\n", "renders a markdown table"),
    ("common/reference/x.py", "import torch\n", "imports torch"),
])
def test_a_crossing_is_found(tmp_path, where, text, found):
    for d in ("frameworks", "common/harness", "common/reference"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(text)
    assert any(found in v for v in violations(tmp_path)), violations(tmp_path)
