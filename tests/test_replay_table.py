"""The replay benchmark's table (`benchmarks/replay.py`): measured placements answer with their seed
means, others with a surrogate fitted to the table that never leaves the measured range; and the
table builder's --shard split (`benchmarks/placement_table.py`)."""

import argparse
import json

import numpy as np
import pytest

from benchmarks import placement_table
from benchmarks import replay as replay_mod
from spaces.budget import make_budget
from trainables.config import load_config
from trainables.landscape import model_space

EPOCHS = 3
KIND_EFFECT = np.array([0.06, 0.0, 0.04, 0.0, -0.03, 0.01])  # q k v o up down
LAYER_EFFECT = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])


def _truth(placement) -> float:
    """A known additive landscape over the shares of each kind's and each layer's sites."""
    from analysis.importance import features

    x, y, _, _ = features(placement, None)
    return 0.5 + float(KIND_EFFECT @ np.array(x) + LAYER_EFFECT @ np.array(y))


@pytest.fixture()
def replay(tmp_path, monkeypatch):
    space = model_space("minilm")
    budget = make_budget(space, 0.5, 8, 2)
    placements = placement_table.draw_placements(space, budget, [2, 4, 8], 80, seed=0)
    held, unseen = placements[:60], placements[60:]
    with open(tmp_path / "table-t.jsonl", "w") as f:
        for p in held:
            for seed in (0, 1):
                final = _truth(p) + (0.01 if seed else -0.01)  # the seed mean is the truth
                row = {"key": p.key, "seed": seed, "score": final, "epoch_scores": [final - 0.2, final - 0.1, final],
                       "adapter_params": p.adapter_params(space), "trainable_params": p.adapter_params(space) + 1000,
                       "compute_hours": 1e-6 * p.adapter_params(space)}
                f.write(json.dumps(row) + "\n")
    (tmp_path / "table-t.meta.json").write_text(json.dumps({"space": space.to_dict(), "epochs": EPOCHS, "lr": 1e-3}))
    monkeypatch.setattr(replay_mod, "DATA", tmp_path)
    return replay_mod.Table("t"), held, unseen


def test_measured_placements_answer_with_their_seed_means(replay):
    table, held, _ = replay
    for p in held[:10]:
        epochs, params, cost = table.lookup(table.placements[p.key])
        assert epochs[-1] == pytest.approx(_truth(p))
        assert epochs[0] == pytest.approx(_truth(p) - 0.2)
        assert params == p.adapter_params(table.space) + 1000
    assert table.misses == 0 and table.lookups == 10


def test_the_surrogate_learns_the_table_and_stays_in_its_range(replay):
    table, held, unseen = replay
    assert min(table.cv_r2[:EPOCHS]) > 0.9  # an additive truth: the per-epoch models recover it out of fold
    finals = [table.values[p.key][0][-1] for p in held]
    errors = []
    for p in unseen:
        epochs, _, cost = table.lookup(p)
        assert min(finals) - 1e-9 <= epochs[-1] <= max(finals) + 1e-9
        assert cost > 0
        errors.append(abs(epochs[-1] - _truth(p)))
    assert table.misses == len(unseen)
    assert float(np.median(errors)) < 0.01


def test_shards_split_the_missing_rows():
    assert placement_table._shard("1/2") == (1, 2)
    for bad in ("2/2", "x", "1-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="--shard"):
            placement_table._shard(bad)


def test_a_surrogate_that_overshoots_is_held_to_the_measured_range(replay):
    table, held, unseen = replay
    table._coef = table._coef * 50  # a badly extrapolating fit
    finals = [table.values[p.key][0][-1] for p in held]
    predicted = [table.lookup(p)[0][-1] for p in unseen]
    assert min(finals) - 1e-9 <= min(predicted) and max(predicted) <= max(finals) + 1e-9
    assert max(predicted) == pytest.approx(max(finals))  # some overshoot was there to clip


def test_trials_to_a_level_counts_the_first_trial_that_reaches_it():
    runs = [{"hv": [0.1, 0.5, 0.9, 0.95]}, {"hv": [0.2, 0.2, 0.3, 0.4]}]
    assert replay_mod.trials_to(runs, 0.9) == [3, float("inf")]
    assert replay_mod.trials_to(runs, 0.2) == [2, 1]
    assert replay_mod._reached([3, float("inf"), 5], 100) == "5 (2/3)"
    assert replay_mod._reached([float("inf")] * 2, 100) == ">100 (0/2)"


def _search_meta(table):
    """What a table's meta says about the search it was built for: budget, ranks and scores."""
    from spaces.scores import PriorScores

    scores = PriorScores.from_summaries(table.space.aliases, [1.0 + 0.1 * i for i in range(6)],
                                        [0.3 + 0.05 * l for l in range(6)], [1.0 + 0.1 * l for l in range(6)])
    table.meta.update({"budget": 0.5, "r_ref": 8, "ranks": [2, 4, 8], "scores": scores.to_dict()})
    return scores


def test_the_baselines_ablation_enqueues_only_the_first_k(replay):
    from search.sampling.samplers import SamplerInputs, make_sampler

    table, _, _ = replay
    space = table.space
    scores = _search_meta(table)
    budget = make_budget(space, 0.5, 8, 2)
    setup = make_sampler("prior", SamplerInputs(space, budget, (2, 4, 8), (1e-3, 1e-2), 12, 0, scores, 1e-3))
    baseline_keys = [b.placement.key for b in setup.baselines]
    seen = []
    lookup = table.lookup
    table.lookup = lambda p: (seen.append(p.key), lookup(p))[1]
    bounds = ((1.0, 0.0, 0.0), (0.0, 1e6, 1.0))
    run = replay_mod.replay
    run(table, "prior", 0, 12, bounds)
    assert len(baseline_keys) == 4 and seen[:4] == baseline_keys, (seen[:4], baseline_keys)
    for k in (0, 2):
        seen.clear()
        run(table, "prior", 0, 12, bounds, baselines=k)
        assert seen[:k] == baseline_keys[:k] and seen[k] not in baseline_keys, (k, seen[:k + 1])


@pytest.mark.parametrize("stopping", ["none", "all", "by-size"])
def test_the_replay_stops_trials_early_by_the_rule_it_is_given(replay, stopping):
    """Every proposal's epochs are charged until the rule (`search.tuning.asha.Rungs`, fed the trial's
    per-epoch scores and trainable params in proposal order) stops it; "none" trains them all."""
    from search.tuning.asha import Rungs

    table, _, _ = replay
    _search_meta(table)
    looked_up = []
    lookup = table.lookup
    table.lookup = lambda p: (looked_up.append(lookup(p)), looked_up[-1])[1]
    out = replay_mod.replay(table, "random", 3, 12, ((1.0, 0.0, 0.0), (0.0, 1e6, 1.0)), stopping=stopping)
    rungs = Rungs(EPOCHS, 1, 2, by_size=stopping == "by-size")
    expected = 0
    for i, (epochs, params, _) in enumerate(looked_up):
        for t, value in enumerate(epochs, start=1):
            expected += 1
            if stopping != "none" and rungs.on_result(str(i), t, value, params):
                break
    assert len(looked_up) == 12 and out["epochs"] == expected
    assert (expected == 12 * EPOCHS) == (stopping == "none")


@pytest.mark.parametrize("config, band", [(None, 3.0), (["smoke"], 1.5)])
def test_the_replay_takes_the_samplers_band_from_the_tables_config(replay, monkeypatch, config, band):
    """The sampler's band around the table's calibrated rate is the config's `search.lr_band` (the
    default config when the meta names none), as the search builds it (`SamplerInputs.from_config`)."""
    from search.sampling import offline

    table, _, _ = replay
    _search_meta(table)
    if config:
        table.meta["config"] = config
        table.config = load_config(config)
    seen, run = [], offline.run_offline
    monkeypatch.setattr(offline, "run_offline", lambda *a, **k: (seen.append(a[1]), run(*a, **k))[1])
    replay_mod.replay(table, "random", 0, 12, ((1.0, 0.0, 0.0), (0.0, 1e6, 1.0)))
    lr = table.meta["lr"]
    assert seen[0].lr_range == pytest.approx((lr / band, lr * band)) and seen[0].calibrated_lr == lr
    assert seen[0].ranks == (2, 4, 8) and seen[0].trials == 12  # the table's ranks, the replay's length


def _arm_rows(name: str, key: str, scores: dict[int, float]) -> list:
    from trainables.standalone import TrainedPlacement

    return [TrainedPlacement.from_row({"key": key, "seed": s, "lr": 3e-3, "baseline": name, "rank": 8,
                                       "adapter_params": 1000, "trainable_params": 1000, "epoch_scores": [v],
                                       "score": v, "train_loss": 0.1, "wall_s": 1.0, "compute_hours": 1e-3,
                                       "failure": None}).record for s, v in scores.items()]


def test_the_named_arms_are_compared_over_paired_seeds_against_the_best_mean():
    from analysis.stats import decide

    good = {0: 0.82, 1: 0.80, 2: 0.81}
    worse = {0: 0.75, 1: 0.74, 2: 0.76}
    close = {0: 0.83, 1: 0.78, 2: 0.80}
    rows = _arm_rows("mlp", "r4 up[0-3]", close) + _arm_rows("plop", "r8 v[0-3]", worse) + \
        _arm_rows("inverse", "r8 q[0-3]", good) + _arm_rows(None, "r2 k[1]", {0: 0.99})  # an unnamed row: not an arm
    arms = placement_table.compare_arms(rows, margin=0.01)
    assert [a["name"] for a in arms] == ["inverse", "mlp", "plop"]  # best mean first
    assert arms[0]["decision"] is None and arms[0]["stats"].mean == pytest.approx(0.81)
    assert arms[2]["decision"] == decide(worse, good, 0.01) and arms[2]["decision"].verdict == "worse"
    assert arms[1]["decision"].verdict == decide(close, good, 0.01).verdict
    assert all(a["stats"].high <= 1.0 for a in arms)  # clipped to the metric's range
    # a lower-is-better metric (nll): the lowest mean is the best arm
    assert placement_table.compare_arms(rows, 0.01, sense="min", bounds=(0.0, None))[0]["name"] == "plop"
