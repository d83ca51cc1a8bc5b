"""Seed statistics, the paired comparison and the recommendation, on fixed numbers."""

import pytest

from analysis.confirmed import Confirmed, group_confirmed, mark_frontier, pick_candidates, recommend
from analysis.stats import BETTER, WITHIN_NOISE, WORSE, paired, seed_stats, t975
from trainables.record import TrialRecord


def test_t_quantiles_match_the_tables():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(10) == 2.228
    assert t975(35) == t975(30) == 2.042  # between rows: the smaller df (a wider interval)
    assert t975(1000) == 1.960
    with pytest.raises(ValueError):
        t975(0)


def test_seed_stats_interval():
    s = seed_stats([0.60, 0.62, 0.64])
    assert s.mean == pytest.approx(0.62) and s.sd == pytest.approx(0.02)
    half = 4.303 * 0.02 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n) = 0.0497
    assert (s.low, s.high) == pytest.approx((0.62 - half, 0.62 + half))
    one = seed_stats([0.7])
    assert one.sd is None and one.low is None and "1 seed" in one.describe()


def test_paired_difference_is_better_worse_or_within_noise():
    a = {0: 0.70, 1: 0.72, 2: 0.71}
    b = {0: 0.60, 1: 0.61, 2: 0.62}
    up = paired(a, b)  # differences 0.10, 0.11, 0.09: mean 0.10, sd 0.01, half-width 0.0248
    assert up.verdict == BETTER and up.diff == pytest.approx(0.10)
    assert (up.low, up.high) == pytest.approx((0.10 - 0.02484, 0.10 + 0.02484), abs=1e-4)
    assert paired(b, a).verdict == WORSE
    noisy = paired({0: 0.70, 1: 0.60, 2: 0.72}, {0: 0.65, 1: 0.66, 2: 0.64})
    assert noisy.verdict == WITHIN_NOISE and noisy.low < 0 < noisy.high  # mean +0.023, 95% CI about +-0.18
    # Pairing matters: a seed-to-seed swing shared by both cancels in the differences.
    shared = paired({0: 0.60, 1: 0.70, 2: 0.80}, {0: 0.58, 1: 0.68, 2: 0.775})
    assert seed_stats([0.60, 0.70, 0.80]).low < seed_stats([0.58, 0.68, 0.775]).high  # unpaired: overlapping
    assert shared.verdict == BETTER
    assert paired({0: 0.9, 5: 0.1}, {0: 0.8}).verdict == WITHIN_NOISE  # one common seed: no interval
    with pytest.raises(ValueError, match="share no seed"):
        paired({0: 0.9}, {1: 0.8})


def _record(trial_id, score, params, baseline=None, seed=0, confirms=None, hours=0.01, status="completed"):
    return TrialRecord(trial_id=trial_id, run_id=f"run-{trial_id}", key=f"r4 q[{trial_id}]", lr=1e-3, status=status,
                       score=score, trainable_params=params, adapter_params=params - 10, compute_hours=hours,
                       baseline=baseline, seed=seed, confirms=confirms)


def _confirmations(trial_id, scores, params):
    return [_record(f"{trial_id}-s{s}", v, params, seed=s, confirms=trial_id) for s, v in scores.items()]


def test_candidates_confirmed_frontier_and_the_recommendation():
    records = [
        _record("big", 0.70, 1000),
        _record("small", 0.69, 100),
        _record("tiny", 0.50, 10, hours=0.001),
        _record("all", 0.66, 1200, baseline="all"),
        _record("attn", 0.60, 900, baseline="attention"),
        _record("dominated", 0.55, 1100),
        _record("stopped", None, 50, status="pruned"),
    ]
    picked = pick_candidates(records, top=2, baselines=1)
    assert [r.trial_id for r in picked] == ["big", "small", "all"]  # frontier by score, then the best baseline
    records += _confirmations("big", {1: 0.72, 2: 0.71}, 1000)
    records += _confirmations("small", {1: 0.66, 2: 0.70}, 100)
    records += _confirmations("all", {1: 0.67, 2: 0.665}, 1200)
    confirmed = mark_frontier(group_confirmed(records))
    by = {c.trial_id: c for c in confirmed}
    assert set(by) == {"big", "small", "all"} and by["big"].scores == {0: 0.70, 1: 0.72, 2: 0.71}
    assert by["big"].pareto and by["small"].pareto and not by["all"].pareto
    rec = recommend(confirmed, max_adapter_params=2000)
    assert rec.pick.trial_id == "big" and rec.budget_share == pytest.approx(990 / 2000)
    assert rec.best_baseline.trial_id == "all" and rec.pick_vs_baseline.verdict == BETTER
    # "small" (100 params) is within noise of "big": offered as the cheaper choice, not hidden.
    assert rec.cheaper.trial_id == "small" and rec.cheaper_vs_pick.verdict == WITHIN_NOISE
    text = "\n".join(rec.lines("accuracy"))
    assert "deploy r4 q[big]" in text and "better" in text and "within noise" in text


def test_a_baseline_can_be_the_recommendation():
    records = [_record("all", 0.70, 1200, baseline="all"), _record("x", 0.60, 100)]
    records += _confirmations("all", {1: 0.71, 2: 0.69}, 1200) + _confirmations("x", {1: 0.61, 2: 0.59}, 100)
    rec = recommend(group_confirmed(records))
    assert rec.pick.baseline == "all" and rec.pick_vs_baseline is None and rec.cheaper is None
    assert "it is the baseline 'all'" in "\n".join(rec.lines("accuracy"))
    assert recommend([]) is None and isinstance(rec.pick, Confirmed)
