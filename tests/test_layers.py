"""The house rules of the code's layout: imports run one way (spaces <- trainables <- analysis <-
search), no import cycle anywhere (imports inside functions count), no private API of Ray or
Optuna in the product, and the driver, the scripts that read MLflow and `analysis/` need no torch."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["spaces", "trainables", "analysis", "search"]  # each may import only the ones before it
PRODUCT = ["spaces", "trainables", "analysis", "search", "benchmarks"]


def _imports(path: Path) -> set[str]:
    """Every absolute module name a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from search.phases import confirm`
    return names


def _modules(folders=PRODUCT) -> dict[str, Path]:
    files = [p for d in folders for p in sorted((ROOT / d).rglob("*.py"))]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in files}


def import_graph(folders=PRODUCT) -> dict[str, set[str]]:
    """Module -> the product's modules it imports (a name resolves to its longest known prefix)."""
    mods = _modules(folders)
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for name in _imports(path):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != m and not m.startswith(name + "."):  # a package's own __init__ is no edge
                graph[m].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        state[u] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_imports_run_one_way():
    wrong = []
    for i, layer in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        for path in sorted((ROOT / layer).rglob("*.py")):
            bad = {n.split(".")[0] for n in _imports(path)} & above
            if bad:
                wrong.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert wrong == []


def test_no_import_cycle_even_through_imports_inside_functions():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a graph with a cycle through three modules is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_product_uses_no_private_api_of_ray_or_optuna():
    pattern = re.compile(r"ray\._private|ray_constants|\._get_trials\b|\._trial_id\b|\._study_id\b|study\._storage\b")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for m, p in _modules().items() if m != RAY_INTERNALS
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


RAY_INTERNALS = "search.runtime.ray_internals"  # the one module allowed Ray's internals (tests/test_ray_internals.py)


def test_only_the_adapter_module_reaches_into_ray_internals():
    """`ray._raylet` and the like are as private as `ray._private`: only the adapter imports them."""
    private = [(m, n) for m, p in _modules().items() for n in _imports(p)
               if n.split(".")[0] == "ray" and any(part.startswith("_") for part in n.split(".")[1:])]
    assert private and {m for m, _ in private} == {RAY_INTERNALS}, private


def test_search_reads_as_the_pipeline():
    """One sub-package per kind of thing below the scripts; the driver tells the phases and nothing else."""
    for package in ("phases", "sampling", "tuning", "tracking", "runtime"):
        assert (ROOT / "search" / package / "__init__.py").is_file(), package
    flat = sorted(p.name for p in (ROOT / "search").glob("*.py"))
    assert flat == ["__init__.py", "api.py", "cli.py", "commands.py", "deploy.py", "driver.py", "report.py", "run.py",
                    "score.py"]
    assert len((ROOT / "search" / "driver.py").read_text().splitlines()) <= 250


def test_the_sampling_package_needs_no_ray():
    for m, path in _modules(["search/sampling"]).items():
        assert not any(n.split(".")[0] == "ray" for n in _imports(path)), m


def test_driver_scripts_and_analysis_import_without_torch():
    modules = ["search.driver", "search.run", "search.report", "search.deploy", "search.api", "search.commands",
               "search.phases.prepare", "trainables.lora",
               "search.phases.explore", "search.phases.publish", "search.tuning.searcher",
               "search.sampling.samplers", "search.sampling.prior_sampler", "search.tuning.tracker",
               "search.tracking.export", "search.runtime.checks", "search.tracking.notes", "search.tracking.ui",
               "analysis.pareto", "analysis.plots", "analysis.heatmap", "analysis.mlflow_read",
               "analysis.report", "spaces.baselines", "spaces.scores", "trainables.record", "trainables.prepare",
               "trainables.tune_entry", "trainables.simulated", "trainables.landscape"]
    code = ("import sys\nsys.modules['torch'] = None  # any `import torch` now fails\n"
            + "".join(f"import {m}\n" for m in modules)
            + "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft', 'accelerate'))\n"
            + "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for folder in ("search", "benchmarks", "scripts", "tests")
                 for p in sorted((ROOT / folder).rglob("*.py"))
                 if "sys.path" in p.read_text() and p.name != "test_layers.py"]
    assert offenders == []
