"""The searcher's contract, driven through its Tune hooks without a cluster: every proposal fits
the budget, and Optuna sees COMPLETE only for trials that finished their schedule."""

import optuna
import pytest
from optuna.trial import TrialState

from search.searcher import OBJECTIVES, PlacementSpace, make_searcher, optuna_state, propose
from spaces import Placement, make_budget
from spaces.space import ModelSpace
from trainables.config import load_config


def _space(n_layers=4):
    shapes = ((16, 16),) * n_layers
    return ModelSpace("enc.layer", n_layers, ("a.q", "a.v", "m.up"), ("q", "v", "up"),
                      (shapes, shapes, ((16, 64),) * n_layers), (False, False, False))


def _searcher(trials=6, sampler="tpe"):
    cfg = load_config(["smoke"], [f"search.trials={trials}", f"search.sampler='{sampler}'"])
    space = _space()
    budget = make_budget(space, 0.3, 8, 2)
    return make_searcher(space, budget, cfg, seed=0), space, budget


FINAL = {"epoch": 2, "epoch_score": 0.8, "final_metric": 0.8, "trainable_params": 100, "gpu_hours": 0.01}


def test_outcomes_reach_optuna_with_the_right_state():
    searcher, space, budget = _searcher()
    configs = {tid: searcher.suggest(tid) for tid in ("done", "stopped", "crashed", "nan")}
    searcher.on_trial_result("done", {"epoch": 1, "epoch_score": 0.5})  # must not raise
    searcher.on_trial_complete("done", FINAL)
    searcher.on_trial_complete("stopped", {"epoch": 1, "epoch_score": 0.4, "trainable_params": 90, "gpu_hours": 0.001})
    searcher.on_trial_complete("crashed", None, error=True)
    searcher.on_trial_complete("nan", {**FINAL, "final_metric": float("nan")})
    states = [t.state for t in searcher._ot_study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED]
    assert searcher._ot_study.get_trials()[0].values == [0.8, 100.0, 0.01]
    for cfg in configs.values():
        assert budget.fits(Placement.from_json(cfg["placement"]).checked(space), space)
    # Tune's strict per-result check must not demand the final-only objectives.
    assert searcher.metric is None and searcher.objectives == OBJECTIVES


def test_optuna_state_rules():
    assert optuna_state(FINAL, False, OBJECTIVES) == (TrialState.COMPLETE, [0.8, 100.0, 0.01])
    assert optuna_state({"epoch_score": 0.3}, False, OBJECTIVES) == (TrialState.PRUNED, None)
    assert optuna_state({"epoch_score": 0.3}, True, OBJECTIVES) == (TrialState.FAIL, None)
    assert optuna_state(None, False, OBJECTIVES) == (TrialState.PRUNED, None)


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
        searcher.on_trial_complete(f"t{i}", {**FINAL, "final_metric": i / 30})
    # The space is explored, not collapsed onto one repaired placement (TPE exploits the rising
    # rewards here, so it revisits more).
    assert len(keys) > (10 if sampler == "random" else 4)


def test_proposal_is_the_product_of_kinds_and_layers():
    space = _space()
    budget = make_budget(space, 1.0, 8, 2)
    p, steps = propose(space, budget, [2, 4, 8], [True, False, True], [False, True, True, False], 4)
    assert p.key == "r4 q[1-2] up[1-2]" and steps == []
