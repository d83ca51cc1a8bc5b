"""The house rules of the code's layout: imports run one way (spaces <- trainables <- analysis <-
search), and the driver, the scripts that read MLflow and `analysis/` need no torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["spaces", "trainables", "analysis", "search"]  # each may import only the ones before it


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imports_run_one_way():
    wrong = []
    for i, layer in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        for path in sorted((ROOT / layer).glob("*.py")):
            bad = _imports(path) & above
            if bad:
                wrong.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert wrong == []


def test_driver_scripts_and_analysis_import_without_torch():
    modules = ["search.driver", "search.run", "search.report", "search.deploy", "search.prepared", "search.searcher",
               "search.samplers", "search.prior_sampler", "search.tracking", "search.frontier", "search.export",
               "search.checks", "search.notes", "search.ui", "analysis.pareto", "analysis.plots", "analysis.heatmap", "analysis.mlflow_read",
               "analysis.report", "spaces.baselines", "spaces.scores", "trainables.record", "trainables.prepare",
               "trainables.tune_entry", "trainables.simulated", "trainables.landscape"]
    code = ("import sys\nsys.modules['torch'] = None  # any `import torch` now fails\n"
            + "".join(f"import {m}\n" for m in modules)
            + "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft', 'accelerate'))\n"
            + "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for folder in ("search", "benchmarks", "scripts")
                 for p in sorted((ROOT / folder).glob("*.py")) if "sys.path" in p.read_text()]
    assert offenders == []
