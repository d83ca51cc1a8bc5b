"""Seed statistics, the paired comparison and the recommendation, on fixed numbers."""

import pytest

from analysis.confirmed import Confirmed, group_confirmed, mark_frontier, pick_candidates, recommend, spread_by_size
from analysis.stats import AS_GOOD, BETTER, UNDECIDED, WORSE, decide, seed_stats, t95, t975
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


def test_the_interval_stays_in_the_metrics_range_and_two_seeds_are_flagged():
    # The numbers: accuracy 0.736 to 1.225 from a t-interval; clipped, it ends at 1.
    raw = seed_stats([0.99, 0.97])  # 2 seeds: t = 12.706, half-width 0.127
    assert raw.high > 1 and not raw.clipped and raw.few_seeds
    acc = seed_stats([0.99, 0.97], bounds=(0.0, 1.0))
    assert (acc.low, acc.high) == (pytest.approx(raw.low), 1.0) and acc.clipped and acc.mean == raw.mean
    assert acc.describe() == ("0.980 ± 0.014 (95% CI 0.853 to 1.000, clipped to the metric's range; "
                              "2 seeds: too wide to mean much)")
    assert acc.interval() == "0.853 to 1.000 (clipped to the metric's range; 2 seeds: too wide to mean much)"
    assert raw.clip(0.0, 1.0) == acc
    nll = seed_stats([0.05, 0.30], bounds=(0.0, None))  # lower-is-better, bounded below by 0 only
    assert nll.low == 0.0 and nll.high > 1 and nll.clipped
    inside = seed_stats([0.60, 0.62, 0.64], bounds=(0.0, 1.0))  # nothing to clip, 3 seeds: no caveat
    assert inside == seed_stats([0.60, 0.62, 0.64]) and inside.describe().endswith(", 3 seeds)")
    assert not inside.few_seeds and seed_stats([0.7], bounds=(0.0, 1.0)).interval() == "-"


def test_the_paired_interval_pairs_seeds():
    a = {0: 0.70, 1: 0.72, 2: 0.71}
    b = {0: 0.60, 1: 0.61, 2: 0.62}
    up = decide(a, b, 0.01)  # differences 0.10, 0.11, 0.09: mean 0.10, sd 0.01, half-width 0.0248
    assert up.verdict == BETTER and up.diff == pytest.approx(0.10)
    assert (up.low, up.high) == pytest.approx((0.10 - 0.02484, 0.10 + 0.02484), abs=1e-4)
    assert up.detectable == pytest.approx(0.02484, abs=1e-4)
    assert decide(b, a, 0.01).verdict == WORSE
    noisy = decide({0: 0.70, 1: 0.60, 2: 0.72}, {0: 0.65, 1: 0.66, 2: 0.64}, 0.01)
    assert noisy.verdict == UNDECIDED and noisy.low < 0 < noisy.high  # mean +0.023, 95% CI about +-0.18
    # Pairing matters: a seed-to-seed swing shared by both cancels in the differences.
    shared = decide({0: 0.60, 1: 0.70, 2: 0.80}, {0: 0.58, 1: 0.68, 2: 0.775}, 0.01)
    assert seed_stats([0.60, 0.70, 0.80]).low < seed_stats([0.58, 0.68, 0.775]).high  # unpaired: overlapping
    assert shared.verdict == BETTER
    assert decide({0: 0.9, 5: 0.1}, {0: 0.8}, 0.01).verdict == UNDECIDED  # one common seed: no interval
    with pytest.raises(ValueError, match="share no seed"):
        decide({0: 0.9}, {1: 0.8}, 0.01)


def _record(trial_id, score, params, baseline=None, seed=0, confirms=None, hours=0.01, status="completed"):
    return TrialRecord(trial_id=trial_id, run_id=f"run-{trial_id}", key=f"r4 q[{trial_id}]", lr=1e-3, status=status,
                       score=score, trainable_params=params, adapter_params=params - 10, compute_hours=hours,
                       baseline=baseline, seed=seed, confirms=confirms)


def _confirmations(trial_id, scores, params):
    return [_record(f"{trial_id}-s{s}", v, params, seed=s, confirms=trial_id) for s, v in scores.items()]


def test_candidates_spread_across_the_frontier_sizes():
    records = [
        _record("big", 0.70, 1000),
        _record("small", 0.69, 100),
        _record("tiny", 0.50, 10, hours=0.001),
        _record("all", 0.66, 1200, baseline="all"),
        _record("attn", 0.60, 900, baseline="attention"),
        _record("dominated", 0.55, 1100),
        _record("stopped", None, 50, status="pruned"),
    ]
    # The best always; then the cheapest end of the frontier, not the next best by score.
    assert [r.trial_id for r in pick_candidates(records, top=2, baselines=1)] == ["big", "tiny", "all"]
    assert [r.trial_id for r in pick_candidates(records, top=3, baselines=1)] == ["big", "tiny", "small", "all"]
    assert [r.trial_id for r in pick_candidates(records, top=1, baselines=2)] == ["big", "all", "attn"]
    assert pick_candidates(records, top=0, baselines=0) == []


def test_spread_by_size_is_log_spaced_from_the_cheapest():
    sizes = [10, 20, 100, 300, 1000, 3000, 10000]
    records = [_record(f"p{n}", 0.5, n) for n in sizes]
    picked = [r.trainable_params for r in spread_by_size(records, 3)]
    assert picked == [10, 300, 10000]  # log10: 1, 2.5 (300 is nearest), 4
    assert [r.trainable_params for r in spread_by_size(records, 1)] == [10]
    assert len(spread_by_size(records, 10)) == 7 and spread_by_size(records, 0) == []


def test_one_sided_quantiles():
    assert t95(1) == 6.314 and t95(2) == 2.920 and t95(35) == t95(30) == 1.697 and t95(500) == 1.645
    with pytest.raises(ValueError):
        t95(0)


def test_the_decision_rule_on_fixed_numbers():
    best = {0: 0.70, 1: 0.72, 2: 0.71}
    # Better: the two-sided interval lies above zero.
    assert decide({0: 0.80, 1: 0.83, 2: 0.81}, best, 0.01).verdict == BETTER
    # As good: 0.2 points below, very steadily: lower bound -0.002 - t95(2) * 0.001 / sqrt(3) > -0.01.
    steady = decide({0: 0.698, 1: 0.719, 2: 0.707}, best, 0.01)
    assert steady.verdict == AS_GOOD and steady.lower_one_sided > -0.01
    # Worse: far below, steadily.
    assert decide({0: 0.60, 1: 0.62, 2: 0.61}, best, 0.01).verdict == WORSE
    # Undecided: too noisy to place either way.
    noisy = decide({0: 0.60, 1: 0.80, 2: 0.70}, best, 0.01)
    assert noisy.verdict == UNDECIDED and noisy.low < 0 < noisy.high and noisy.detectable > 0.2
    # One common seed: no interval, undecided (never "as good" from absence of evidence).
    assert decide({0: 0.70}, best, 0.05).verdict == UNDECIDED
    with pytest.raises(ValueError, match="margin"):
        decide(best, best, -0.1)


def test_the_margin_edge():
    best = {0: 0.5, 1: 0.5, 2: 0.5}
    lower = {0: 0.25, 1: 0.25, 2: 0.25}  # exactly 0.25 below on every seed (exact in binary)
    assert decide(lower, best, 0.25).verdict == WORSE  # the bound must be ABOVE -margin
    assert decide(lower, best, 0.2500001).verdict == AS_GOOD
    assert decide(lower, best, 0.0).verdict == WORSE


def test_the_confirmed_frontier_and_the_recommendation():
    records = [
        _record("big", 0.70, 1000),
        _record("small", 0.69, 100),
        _record("tiny", 0.50, 10, hours=0.001),
        _record("all", 0.66, 1200, baseline="all"),
    ]
    records += _confirmations("big", {1: 0.72, 2: 0.71}, 1000)
    records += _confirmations("small", {1: 0.718, 2: 0.707}, 100)  # steadily 0.1-0.2 points below big
    records += _confirmations("tiny", {1: 0.52, 2: 0.49}, 10, )
    records += _confirmations("all", {1: 0.67, 2: 0.665}, 1200)
    confirmed = mark_frontier(group_confirmed(records))
    by = {c.trial_id: c for c in confirmed}
    assert set(by) == {"big", "small", "tiny", "all"} and by["big"].scores == {0: 0.70, 1: 0.72, 2: 0.71}
    assert by["big"].pareto and by["small"].pareto and not by["all"].pareto
    rec = recommend(confirmed, max_adapter_params=2000, margin=0.02)
    # The smallest placement shown as good as the best: "small", not "tiny" (worse) nor "big".
    assert rec.best.trial_id == "big" and rec.pick.trial_id == "small"
    assert rec.pick_vs_best.verdict == AS_GOOD and rec.budget_share == pytest.approx(90 / 2000)
    assert rec.verdict(by["tiny"]) == WORSE and rec.verdict(by["big"]) == "best"
    assert rec.best_baseline.trial_id == "all" and rec.pick_vs_baseline.verdict == BETTER
    text = "\n".join(rec.lines("accuracy"))
    assert "deploy r4 q[small]" in text and "as good as the best" in text and "margin of 0.02" in text
    # With a margin too tight for three seeds, nothing smaller is shown as good: the best, plainly.
    tight = recommend(confirmed, margin=0.0)
    assert tight.pick.trial_id == "big" and tight.pick_vs_best is None
    assert "no smaller confirmed placement is shown as good" in "\n".join(tight.lines("accuracy"))


def test_a_baseline_can_be_the_recommendation():
    records = [_record("all", 0.70, 1200, baseline="all"), _record("x", 0.60, 100)]
    records += _confirmations("all", {1: 0.71, 2: 0.69}, 1200) + _confirmations("x", {1: 0.61, 2: 0.59}, 100)
    rec = recommend(group_confirmed(records))
    assert rec.pick.baseline == "all" and rec.pick_vs_baseline is None and rec.pick_vs_best is None
    assert "it is the baseline 'all'" in "\n".join(rec.lines("accuracy"))
    assert recommend([]) is None and isinstance(rec.pick, Confirmed)


def test_a_race_decides_better_and_worse_at_its_stricter_level():
    """Racing looks after every round, so each look decides better / worse at 1% two-sided
    (analysis.confirmed.RACE_LEVEL): a gain the 95% interval calls real can stay undecided at 99%."""
    from analysis.confirmed import RACE_LEVEL, decision_level
    from analysis.stats import t975, t_two_sided

    a = {0: 0.70, 1: 0.72, 2: 0.69, 3: 0.73, 4: 0.71}
    b = {0: 0.66, 1: 0.70, 2: 0.66, 3: 0.69, 4: 0.69}  # gains 0.04 0.02 0.03 0.04 0.02: mean 0.03, sd 0.01
    at95, at99 = decide(a, b, 0.0, level=0.05), decide(a, b, 0.0, level=RACE_LEVEL)
    assert at95.verdict == "better" and at95.low > 0
    assert at99.low < at95.low and at99.high > at95.high and at99.level == 0.01
    assert "99% CI" in at99.describe() and "95% CI" in at95.describe()
    c = {0: 0.69, 1: 0.72, 2: 0.66, 3: 0.715, 4: 0.70}  # gains 0.03 0.02 0 0.025 0.01: mean 0.017, t = 3.15
    assert decide(c, b, 0.0, level=0.05).verdict == "better"  # t > 2.776
    assert decide(c, b, 0.0, level=0.01).verdict == "as good"  # t < 4.604: not shown better, only not worse
    assert t_two_sided(0.05, 4) == t975(4) == 2.776 and t_two_sided(0.01, 4) == 4.604 and t_two_sided(0.01, 500) == 2.576
    with pytest.raises(ValueError, match="no t table"):
        t_two_sided(0.02, 4)
    assert decision_level(0) == 0.05 and decision_level(10) == RACE_LEVEL
