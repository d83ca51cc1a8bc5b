"""The searcher's contract, driven through its Tune hooks without a cluster: every proposal fits
the budget, and Optuna sees COMPLETE only for trials that finished their schedule."""

import math
import random

import optuna
import pytest
from optuna.trial import TrialState

from search.sampling.proposal import propose
from search.sampling.samplers import SamplerInputs
from search.sampling.study import (
    OBJECTIVE_NAMES,
    close_running,
    open_study_storage,
    optuna_state,
)
from search.tuning.searcher import make_searcher
from spaces import Placement, make_budget
from spaces.space import ModelSpace
from trainables.config import load_config


def _space(n_layers=4):
    shapes = ((16, 16),) * n_layers
    return ModelSpace("enc.layer", n_layers, ("attn.q_proj", "attn.v_proj", "mlp.up_proj"), ("q", "v", "up"),
                      (shapes, shapes, ((16, 64),) * n_layers), (False, False, False))


def _searcher(trials=6, sampler="tpe", storage=None):
    cfg = load_config(["smoke"], [f"search.trials={trials}", f"search.sampler='{sampler}'"])
    space = _space()
    budget = make_budget(space, 0.3, 8, 2)
    store = open_study_storage(storage) if storage else None
    inputs = SamplerInputs.from_config(space, budget, cfg)
    return make_searcher(inputs, sampler, store, "s" if store else None), space, budget


def _ready(searcher):
    """What Tune does before the first suggest: hand the searcher its (empty) config space."""
    searcher.set_search_properties(None, None, {})
    return searcher


FINAL = {"epoch": 2, "epoch_score": 0.8, "score": 0.8, "trainable_params": 100, "compute_hours": 0.01}


def test_outcomes_reach_optuna_with_the_right_state():
    searcher, space, budget = _searcher()
    configs = {tid: searcher.suggest(tid) for tid in ("done", "stopped", "crashed", "nan", "failure")}
    searcher.on_trial_result("done", {"epoch": 1, "epoch_score": 0.5})  # must not raise
    searcher.on_trial_complete("done", FINAL)
    searcher.on_trial_complete("stopped", {"epoch": 1, "epoch_score": 0.4, "trainable_params": 90, "compute_hours": 0.001})
    searcher.on_trial_complete("crashed", None, error=True)
    searcher.on_trial_complete("nan", {**FINAL, "score": float("nan")})
    searcher.on_trial_complete("failure", {"epoch_score": float("nan"), "failure": "non-finite training loss"})
    states = [t.state for t in searcher.study.get_trials(deepcopy=False)]
    # Tune's error (a lost worker, a full disk) is no outcome: RUNNING until a rerun tells one...
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.PRUNED, TrialState.FAIL]
    assert close_running(searcher.study) == [2]  # ...or the phase ends without one
    assert searcher.study.get_trials(deepcopy=False)[2].state == TrialState.FAIL
    assert searcher.study.get_trials()[0].values == [0.8, 100.0]  # never compute_hours
    for cfg in configs.values():
        assert budget.fits(Placement.from_json(cfg["placement"]).checked(space), space)
    # Tune's strict per-result check must not demand the final-only objectives.
    assert searcher.metric is None and OBJECTIVE_NAMES == ["score", "trainable_params"]


def test_optuna_state_rules():
    assert optuna_state(FINAL, False) == (TrialState.COMPLETE, [0.8, 100.0])
    assert optuna_state({**FINAL, "compute_hours": 9.0}, False) == (TrialState.COMPLETE, [0.8, 100.0])
    assert optuna_state({"epoch_score": 0.3}, False) == (TrialState.PRUNED, None)
    assert optuna_state({"epoch_score": 0.3}, True) == (TrialState.FAIL, None)
    assert optuna_state({"epoch_score": 0.3, "failure": "out of memory"}, False) == (TrialState.FAIL, None)
    assert optuna_state(None, False) == (TrialState.PRUNED, None)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_every_suggestion_fits_the_budget(sampler):
    searcher, space, budget = _searcher(trials=30, sampler=sampler)
    keys = set()
    for i in range(30):
        cfg = searcher.suggest(f"t{i}")
        p = Placement.from_json(cfg["placement"]).checked(space)
        assert budget.fits(p, space) and not p.is_empty()
        assert cfg["placement_key"] == p.key and 0 < cfg["budget_ratio"] <= 0.3
        keys.add(p.key)
        searcher.on_trial_complete(f"t{i}", {**FINAL, "score": i / 30})
    # The space is explored, not collapsed onto one repaired placement (TPE exploits the rising
    # rewards here, so it revisits more).
    assert len(keys) > (10 if sampler == "random" else 4)


def _proposals(sampler: str, jitter_seed: int, trials: int = 16) -> list[tuple[str, float]]:
    """One search driven through the searcher's hooks: every outcome a fixed function of the
    proposal, but for `compute_hours`, which jitters as wall time does on a busy machine."""
    searcher, space, _ = _searcher(trials=trials, sampler=sampler)
    _ready(searcher)
    jitter = random.Random(jitter_seed)
    proposals = []
    for i in range(trials):
        cfg = searcher.suggest(f"t{i}")
        p = Placement.from_json(cfg["placement"])
        score = 0.5 + 0.02 * p.n_sites + 0.03 * p.ranks[1][2] / 8 - 0.05 * abs(math.log(cfg["lr"] / 3e-3))
        searcher.on_trial_complete(f"t{i}", {"epoch": 2, "epoch_score": score, "score": score,
                                             "trainable_params": p.adapter_params(space) + 10,
                                             "compute_hours": jitter.uniform(0.001, 0.1)})
        proposals.append((cfg["placement_key"], cfg["lr"]))
    return proposals


@pytest.mark.parametrize("sampler", ["tpe", "prior"])
def test_the_same_search_on_a_busy_machine_proposes_the_same_placements(sampler):
    """Measured wall time follows the machine's load; the sampler must not condition on it
    (`search.sampling.study`: the study is told the score and the trainable params only)."""
    first, again = _proposals(sampler, jitter_seed=1), _proposals(sampler, jitter_seed=2)
    assert len(set(first)) > 8  # a search that explores, past the sampler's startup trials
    assert first == again


def test_proposal_is_the_product_of_kinds_and_layers():
    space = _space()
    budget = make_budget(space, 1.0, 8, 2)
    p, steps = propose(space, budget, [2, 4, 8], [True, False, True], [False, True, True, False], 4)
    assert p.key == "r4 q[1-2] up[1-2]" and steps == []


def test_a_restarted_driver_continues_the_same_study_in_its_database(tmp_path):
    """The RDB study outlives the driver: what was told after Tune's last snapshot is kept, a trial
    asked for after it is asked again (the same Optuna trial, never a copy), and the restored
    searcher goes on in the same study."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    live, _, _ = _searcher(trials=10, storage=url)
    _ready(live)
    for tid in ("t0", "t1", "t2"):
        live.suggest(tid)
    live.on_trial_complete("t0", FINAL)
    live.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot
    live.on_trial_complete("t1", {**FINAL, "score": 0.9})  # told after the snapshot ...
    live.suggest("t3")  # ... and asked for after it: Tune's restored state has no t3
    del live  # the driver dies

    restored, space, budget = _searcher(trials=10, storage=url)
    restored.restore(str(tmp_path / "searcher.pkl"))
    study = optuna.load_study(study_name="s", storage=url)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING, TrialState.RUNNING]
    restored.on_trial_complete("t1", {**FINAL, "score": 0.1})  # the rerun of t1: first outcome stays
    restored.on_trial_complete("t2", FINAL)
    cfg = restored.suggest("t4")  # Tune asks for the trial it lost: trial 3, asked again
    assert cfg["optuna_trial"] == 3 and budget.fits(Placement.from_json(cfg["placement"]).checked(space), space)
    restored.on_trial_complete("t4", FINAL)
    assert restored.suggest("t5")["optuna_trial"] == 4
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]  # one study, its history kept
    assert trials[1].values[0] == 0.9 and trials[2].state == trials[3].state == TrialState.COMPLETE
    assert trials[3].user_attrs["tune_trial_id"] == "t4"


def test_a_trial_tune_kept_but_the_searcher_snapshot_missed_is_told_and_leaves_nothing_waiting(tmp_path):
    """Tune's experiment state can be newer than the searcher's snapshot (they are separate files):
    Tune reruns a trial the restored searcher never heard of. Its outcome reaches its own Optuna
    trial through the trial's config, and no copy of it stays WAITING in the study."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    live, _, _ = _searcher(trials=6, sampler="prior", storage=url)
    _ready(live)
    first = live.suggest("t0")
    live.save(str(tmp_path / "searcher.pkl"))  # the searcher's snapshot ...
    kept = live.suggest("t1")  # ... then t1, which Tune's own (newer) experiment state does hold
    assert kept["baseline"]
    del live

    restored, _, _ = _searcher(trials=6, sampler="prior", storage=url)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("t0", {**FINAL, "config": first})
    restored.on_trial_complete("t1", {**FINAL, "score": 0.7, "config": kept})  # Tune reran t1
    for i in range(4):  # Tune knows 2 trials of 6: it asks for 4 more
        restored.on_trial_complete(f"n{i}", {**FINAL, "config": restored.suggest(f"n{i}")})
    assert close_running(restored.study) == []
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6  # nothing WAITING or RUNNING
    assert trials[1].values[0] == 0.7 and trials[1].user_attrs["baseline"] == kept["baseline"]


def test_orphans_nobody_asked_for_again_are_closed_at_the_end(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    live, _, _ = _searcher(trials=3, storage=url)
    _ready(live)
    live.suggest("t0")
    live.save(str(tmp_path / "searcher.pkl"))
    live.suggest("t1")
    del live
    restored, _, _ = _searcher(trials=3, storage=url)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("t0", FINAL)  # the search ends (a cost cap) before asking again
    assert close_running(restored.study) == [1]
    assert [t.state for t in optuna.load_study(study_name="s", storage=url).get_trials()] == \
        [TrialState.COMPLETE, TrialState.FAIL]


def test_a_baseline_lost_with_the_driver_is_asked_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    live, _, _ = _searcher(trials=12, sampler="prior", storage=url)
    _ready(live)
    first = live.suggest("t0")
    live.save(str(tmp_path / "searcher.pkl"))
    lost = live.suggest("t1")  # the second baseline, asked for after the snapshot
    assert first["baseline"] and lost["baseline"] and lost["baseline"] != first["baseline"]
    n_baselines = sum(1 for t in live.study.get_trials() if t.state == TrialState.WAITING) + 2
    del live

    restored, _, _ = _searcher(trials=12, sampler="prior", storage=url)
    restored.restore(str(tmp_path / "searcher.pkl"))
    names = [restored.suggest(f"r{i}")["baseline"] for i in range(n_baselines - 1)]
    assert sorted(names) == sorted({*names}) and lost["baseline"] in names and first["baseline"] not in names


def test_the_in_memory_study_still_restores(tmp_path):
    live, _, _ = _searcher(trials=6)
    _ready(live)
    live.suggest("t0")
    live.on_trial_complete("t0", FINAL)
    live.save(str(tmp_path / "searcher.pkl"))
    restored, _, _ = _searcher(trials=6)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [t.state for t in restored.study.get_trials()] == [TrialState.COMPLETE]


def test_the_study_file_commits_without_waiting_for_the_disk_also_after_a_restore(tmp_path):
    """WAL + synchronous=NORMAL (search.sampling.study.sqlite_connect): in SQLite's default mode each of
    the ~20 commits of a proposal waited for the disk (0.3 s per proposal, docs/benchmarks.md)."""
    import pickle

    storage = open_study_storage(f"sqlite:///{tmp_path / 'study.db'}")
    optuna.create_study(storage=storage, study_name="s")
    for store in (storage, pickle.loads(pickle.dumps(storage))):  # Tune pickles the searcher's study
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert open_study_storage("sqlite://").engine.url.database in (None, "")  # in memory: untouched
