"""Early stopping (`search.tuning.asha`): plain ASHA rule for rule as Ray's, and the by-size rule."""

import random
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from search.tuning.asha import PlacementASHA, Rungs
from trainables.config import Config
from trainables.record import EPOCH_SCORE, TRAINABLE_PARAMS


@pytest.mark.parametrize("max_t, grace, factor", [(3, 1, 2), (9, 1, 3), (8, 2, 2), (4, 4, 2)])
def test_plain_rungs_decide_as_rays_asha(max_t, grace, factor):
    """Interleaved trials reporting random scores every epoch: every decision equals the one Ray's
    one-bracket ASHA makes on the same stream."""
    rng = random.Random(max_t * 100 + grace * 10 + factor)
    ours, ray_bracket = Rungs(max_t, grace, factor, by_size=False), _Bracket(grace, max_t, factor, 0)
    assert sorted(ours.milestones) == sorted(m for m, _ in ray_bracket._rungs)
    running = {f"t{i}": 0 for i in range(40)}
    decisions = []
    while running:
        tid = rng.choice(sorted(running))
        running[tid] += 1
        score = round(rng.random(), 2)  # ties happen
        stop = ours.on_result(tid, running[tid], score, size=rng.random())
        assert stop == (ray_bracket.on_result(SimpleNamespace(trial_id=tid), running[tid], score) == TrialScheduler.STOP)
        decisions.append(stop)
        if stop or running[tid] == max_t:
            del running[tid]
    assert any(decisions) and not all(decisions)  # the stream exercises both outcomes


def test_by_size_compares_a_trial_only_with_placements_no_larger_than_it():
    rungs = Rungs(3, 1, 2, by_size=True)
    assert not rungs.on_result("big-a", 1, 0.90, size=1000)
    assert not rungs.on_result("big-b", 1, 0.92, size=1000)
    # smaller than both: nothing to compare with, so it goes on (plain ASHA would stop it)
    assert not rungs.on_result("small", 1, 0.70, size=100)
    assert Rungs(3, 1, 2, by_size=False).on_result("x", 1, 0.0, 0) is False  # first trial always goes on
    # a mid-sized placement below the small one stops: something smaller already does better
    assert rungs.on_result("mid", 1, 0.60, size=500)
    # a big one above the median of the no-larger ones (0.60, 0.70, 0.90, 0.92 -> 0.80) goes on
    assert not rungs.on_result("big-c", 1, 0.81, size=1000)
    # the rung judges each trial once; a later epoch below the rung's milestone 2 goes on
    assert not rungs.on_result("mid", 1, 0.0, size=500)
    # at rung 2 the small one is compared with no one smaller
    assert not rungs.on_result("big-a", 2, 0.95, size=1000)
    assert not rungs.on_result("small", 2, 0.71, size=100)
    assert rungs.on_result("big-b", 2, 0.70, size=1000)  # median of 0.95, 0.71 is 0.83


def test_plain_rule_stops_the_small_trial_that_by_size_keeps():
    plain = Rungs(3, 1, 2, by_size=False)
    plain.on_result("big", 1, 0.9, size=1000)
    assert plain.on_result("small", 1, 0.7, size=100)


def test_rungs_reject_a_schedule_that_cannot_run():
    with pytest.raises(ValueError, match="grace"):
        Rungs(3, 4, 2, by_size=True)
    with pytest.raises(ValueError, match="factor"):
        Rungs(3, 1, 1, by_size=True)


def _result(epoch, score=None, size=None):
    out = {"training_iteration": epoch}
    if score is not None:
        out[EPOCH_SCORE] = score
    if size is not None:
        out[TRAINABLE_PARAMS] = size
    return out


def test_the_tune_scheduler_stops_and_continues_from_results():
    sched = PlacementASHA(EPOCH_SCORE, "max", max_t=3, grace=1, factor=2, by_size=True, size_attr=TRAINABLE_PARAMS)
    assert sched.set_search_properties(None, None) and not sched.set_search_properties("loss", "min")
    big, small, mid = (SimpleNamespace(trial_id=t) for t in ("big", "small", "mid"))
    assert sched.on_trial_result(None, big, _result(1, 0.9, 1000)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, small, _result(1, 0.7, 100)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, mid, _result(1, 0.6, 500)) == TrialScheduler.STOP
    assert sched.stopped == 1 and "1 stopped" in sched.debug_string()
    # a result without the metric (a trial's failure report) goes on; one without a size is
    # compared with every earlier trial
    assert sched.on_trial_result(None, SimpleNamespace(trial_id="f"), _result(1)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, SimpleNamespace(trial_id="n"), _result(1, 0.65)) == TrialScheduler.STOP


def test_the_tune_scheduler_minimises_when_told():
    sched = PlacementASHA("loss", "min", max_t=3, grace=1, factor=2, by_size=False, size_attr=TRAINABLE_PARAMS)
    assert sched.on_trial_result(None, SimpleNamespace(trial_id="a"), {"training_iteration": 1, "loss": 1.0}) == "CONTINUE"
    assert sched.on_trial_result(None, SimpleNamespace(trial_id="b"), {"training_iteration": 1, "loss": 2.0}) == "STOP"
    with pytest.raises(ValueError, match="mode"):
        PlacementASHA("loss", "lowest", 3, 1, 2, False, TRAINABLE_PARAMS)


@pytest.mark.parametrize("by_size", [True, False])
def test_the_search_builds_its_scheduler_from_the_config(by_size):
    from search.phases.explore import scheduler as _scheduler

    cfg = Config()
    cfg.search.asha_by_size = by_size
    cfg.train.epochs, cfg.search.asha_grace_epochs, cfg.search.asha_reduction_factor = 4, 9, 2
    sched = _scheduler(cfg, "accuracy")
    assert sched.rungs.by_size is by_size and sched.rungs.milestones == [4]  # grace clipped to the epochs
    assert sched.metric == EPOCH_SCORE and sched.size_attr == TRAINABLE_PARAMS
