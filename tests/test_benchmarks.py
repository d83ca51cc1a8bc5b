"""The benchmarks are a package (every script imports as `benchmarks.<name>` and runs as
`python -m benchmarks.<name>`), and the offline search they share with the product
(`search.sampling.offline`) proposes the same trials for the same seed."""

import importlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from search.sampling.offline import Outcome, run_offline
from search.sampling.samplers import SamplerInputs
from spaces.budget import make_budget
from trainables.landscape import Landscape, model_space

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_imports_from_the_package_and_shows_the_module_command(name):
    module = importlib.import_module(f"benchmarks.{name}")
    if hasattr(module, "main"):  # a script, not a helper of one: its usage lines run it as a module
        assert f"python -m benchmarks.{name}" in module.__doc__
        assert f"benchmarks/{name}.py --" not in module.__doc__


def test_the_replay_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.replay", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--early-stopping" in proc.stdout and "--task" in proc.stdout


def _search(sampler: str, seed: int, trials: int = 12, jitter: int | None = None):
    """An offline search on a synthetic landscape: two epochs per trial (the first 0.1 lower),
    stopped after the first when it scores below 0.62. jitter: seeds a random factor (1 to 3) on
    each trial's measured cost, as a busy machine's wall time has."""
    space = model_space("minilm")
    budget = make_budget(space, 0.5, 8, 2)
    land = Landscape(space, 0, "informative")
    inputs = SamplerInputs(space, budget, (2, 4, 8), (1e-3, 1e-2), trials, seed, land.scores)
    load = random.Random(jitter)

    def train(placement, lr):
        m, params = land.metric(placement), placement.adapter_params(space)
        return Outcome([m - 0.1, m], params, 1e-6 * params * (1 if jitter is None else load.uniform(1, 3)))

    return run_offline(sampler, inputs, train, stop=lambda trial_id, epoch, score, size: score < 0.62)


@pytest.mark.parametrize("sampler", ["prior", "tpe", "random"])
def test_the_offline_search_proposes_the_same_trials_for_the_same_seed(sampler):
    first, again, other = _search(sampler, 0), _search(sampler, 0), _search(sampler, 1)
    proposals = [(r.key, r.lr, r.status, r.epochs) for r in first]
    assert len(proposals) == 12
    assert proposals == [(r.key, r.lr, r.status, r.epochs) for r in again]
    assert [(r.key, r.lr) for r in first] != [(r.key, r.lr) for r in other]  # the seed is what decides


@pytest.mark.parametrize("sampler", ["prior", "tpe"])
def test_the_offline_search_proposes_the_same_trials_whatever_the_measured_cost(sampler):
    """The replays tell the study what the searcher tells it (`search.sampling.study.optuna_state`):
    never the measured cost, which follows the machine's load."""
    calm, busy = _search(sampler, 0, trials=20), _search(sampler, 0, trials=20, jitter=1)
    assert [(r.key, r.lr, r.status) for r in calm] == [(r.key, r.lr, r.status) for r in busy]
    assert [r.compute_hours for r in calm] != [r.compute_hours for r in busy]  # the records keep what was measured


def test_the_offline_search_records_each_trial_as_the_search_would():
    records = _search("prior", 0)
    n_baselines = sum(r.baseline is not None for r in records)
    assert n_baselines == 4 and all(r.baseline for r in records[:n_baselines])  # enqueued first
    statuses = {r.status for r in records}
    assert statuses == {"completed", "pruned"}, statuses  # the stop rule both stopped and spared trials
    for r in records:
        if r.status == "pruned":  # stopped after its first epoch: no score, half the cost
            assert r.epochs == 1 and r.score is None and r.last_score < 0.62
            assert r.compute_hours == pytest.approx(0.5e-6 * r.adapter_params)
        else:
            assert r.epochs == 2 and r.score == r.last_score
            assert r.compute_hours == pytest.approx(1e-6 * r.adapter_params)
