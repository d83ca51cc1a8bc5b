"""A lower-is-better metric (`nll`) is optimised downwards everywhere scores are compared: the
frontier and its hypervolume, ASHA (by size too), the study's directions, the prior sampler's
evidence, the learning-rate probe, the paired decisions, the recommendation, which prior was
right, the tables and the views. The one definition is `trainables.record.sense`; accuracy stays
"max" and its behaviour is what the other tests pin."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import optuna
import pytest

from analysis.direction import best_first, gain, score_objectives
from analysis.pareto import bounds_of, frontier, hypervolume, objective_points
from analysis.stats import AS_GOOD, BETTER, UNDECIDED, WORSE, decide
from search.runtime.errors import UsageError
from trainables import record as R
from trainables.record import TrialRecord

optuna.logging.set_verbosity(optuna.logging.WARNING)
NLL = R.sense(R.NLL)


def test_the_metrics_say_which_way_they_improve():
    assert [R.sense(m) for m in (R.ACCURACY, R.BALANCED_ACCURACY, R.EXACT_MATCH, R.TOKEN_ACCURACY)] == ["max"] * 4
    assert NLL == "min" and not R.higher_is_better(R.NLL) and R.oriented(0.7, R.NLL) == -0.7
    assert score_objectives(NLL) == ((R.SCORE, "min"), (R.TRAINABLE_PARAMS, "min"), (R.COMPUTE_HOURS, "min"))
    assert score_objectives() == R.OBJECTIVES  # accuracy's objectives are the default ones
    assert gain(0.4, "min") > gain(0.5, "min") and best_first(0.4, "min") < best_first(0.5, "min")
    assert best_first(None, "min") == math.inf
    with pytest.raises(ValueError, match="sense"):
        gain(1.0, R.NLL)  # a metric name is not a sense


# ---- the frontier and its hypervolume --------------------------------------------------------
def _trial(key, nll, params, hours, **extra):
    return {"run_id": key, "key": key, "status": R.COMPLETED, R.SCORE: nll, R.TRAINABLE_PARAMS: params,
            R.COMPUTE_HOURS: hours, **extra}


# A: best nll at its size; B: small; C: A's size and cost but a worse (higher) nll; D: the lowest nll.
TRIALS = [_trial("A", 0.5, 1000, 1.0), _trial("B", 0.8, 100, 0.5), _trial("C", 0.9, 1000, 1.0),
          _trial("D", 0.4, 2000, 2.0)]


def test_the_frontier_of_a_lower_is_better_metric():
    on = {r["key"] for r in frontier(TRIALS, score_objectives(NLL)) if r["pareto"]}
    assert on == {"A", "B", "D"}  # C has A's size and cost and a higher nll: dominated
    # the same trials read as accuracy would keep C and drop A and D
    assert {r["key"] for r in frontier(TRIALS) if r["pareto"]} == {"B", "C"}


def test_the_search_marks_the_frontier_in_the_metrics_direction(tmp_path):
    from analysis.plots import plot_pareto_html
    from search.phases.publish import mark_frontier

    records = [TrialRecord(trial_id=t["key"], run_id=t["key"], key=t["key"], status=R.COMPLETED, score=t[R.SCORE],
                           trainable_params=t[R.TRAINABLE_PARAMS], compute_hours=t[R.COMPUTE_HOURS]) for t in TRIALS]
    assert {r.key for r in mark_frontier(records, NLL) if r.pareto} == {"A", "B", "D"}
    page = plot_pareto_html(TRIALS, tmp_path / "p.html", R.NLL).read_text()  # the sense from the metric's name
    assert "3 on the Pareto front" in page and "nll min" in page


def test_the_hypervolume_of_a_lower_is_better_metric():
    senses = tuple(s for _, s in score_objectives(NLL))
    points = objective_points([t for t in TRIALS if t["key"] != "C"], score_objectives(NLL))
    ideal, nadir = bounds_of(points, senses)
    assert ideal[0] == 0.4 and nadir[0] == 0.8  # the lowest nll is the ideal
    bounds = ((0.3, 0.0, 0.0), (1.0, 2500.0, 2.5))
    hv = hypervolume(points, senses, bounds=bounds)
    better = [(0.35, *p[1:]) if p[0] == 0.5 else p for p in points]  # A's nll lowered
    worse = [(0.7, *p[1:]) if p[0] == 0.5 else p for p in points]  # A's nll raised
    assert hypervolume(better, senses, bounds=bounds) > hv > hypervolume(worse, senses, bounds=bounds)
    # it is the hypervolume of the negated scores maximised
    negated = [(-p[0], *p[1:]) for p in points]
    assert hypervolume(negated, ("max", "min", "min"), bounds=((-0.3, 0.0, 0.0), (-1.0, 2500.0, 2.5))) == \
        pytest.approx(hv)


# ---- ASHA, as the search builds it ------------------------------------------------------------
def _result(epoch, nll, size):
    return {"training_iteration": epoch, R.EPOCH_SCORE: nll, R.TRAINABLE_PARAMS: size}


@pytest.mark.parametrize("by_size", [True, False])
def test_asha_stops_the_higher_nll(by_size):
    from search.phases.explore import scheduler
    from trainables.config import Config

    cfg = Config()
    cfg.train.epochs, cfg.search.asha_grace_epochs, cfg.search.asha_reduction_factor = 3, 1, 2
    cfg.search.asha_by_size = by_size
    sched = scheduler(cfg, R.NLL)
    assert sched._mode == "min" and scheduler(cfg, R.ACCURACY)._mode == "max"
    trial = lambda name: SimpleNamespace(trial_id=name)
    assert sched.on_trial_result(None, trial("big"), _result(1, 0.5, 1000)) == "CONTINUE"  # the first goes on
    small = sched.on_trial_result(None, trial("small"), _result(1, 0.9, 100))
    # by size the smallest so far goes on; against every trial its nll is above big's: stopped
    assert small == ("CONTINUE" if by_size else "STOP")
    assert sched.on_trial_result(None, trial("low"), _result(1, 0.45, 500)) == "CONTINUE"  # the lowest nll yet
    assert sched.on_trial_result(None, trial("high"), _result(1, 1.2, 500)) == "STOP"  # the highest nll yet
    if by_size:  # peers no larger than 500: small (0.9), low (0.45), high (1.2): median 0.9, and 0.85 is below
        assert sched.on_trial_result(None, trial("mid"), _result(1, 0.85, 500)) == "CONTINUE"


# ---- the Optuna study -------------------------------------------------------------------------
def test_the_study_minimises_a_lower_is_better_score():
    from search.sampling.study import DIRECTIONS, create_study, directions

    assert directions(R.NLL) == ["minimize", "minimize"]
    assert directions(R.ACCURACY) == DIRECTIONS == ["maximize", "minimize"]
    study = create_study(optuna.samplers.RandomSampler(seed=0), metric_name=R.NLL)
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2


def test_the_searcher_and_the_claim_make_the_metrics_study(tmp_path):
    from search.runtime.workspace import claim_study
    from search.sampling.samplers import SamplerInputs
    from search.sampling.study import open_study_storage, study_directions
    from search.tuning.searcher import make_searcher
    from spaces import make_budget
    from spaces.space import ModelSpace

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    claim_study(url, "sft", R.NLL)
    assert study_directions(optuna.load_study(study_name="sft", storage=url)) == ["minimize", "minimize"]
    space = ModelSpace("layers", 2, ("q", "v"), ("q", "v"), (((8, 8),) * 2,) * 2, (False,) * 2)
    inputs = SamplerInputs(space, make_budget(space, 0.5, 4, 2), (2, 4), (1e-3, 1e-2), 6)
    searcher = make_searcher(inputs, "random", open_study_storage(url), "sft", metric_name=R.NLL)
    assert study_directions(searcher.study) == ["minimize", "minimize"]
    assert study_directions(make_searcher(inputs, "random").study) == ["maximize", "minimize"]


def test_a_study_made_to_maximise_is_never_continued_to_minimise(tmp_path):
    """Every study made before lower-is-better metrics maximizes the score: an accuracy search
    continues it unchanged; an nll search under that name is refused (Optuna would load it silently
    and learn backwards)."""
    from search.sampling.study import create_study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="old", storage=url, directions=["maximize", "minimize"])  # as before
    storage = optuna.storages.RDBStorage(url)
    sampler = optuna.samplers.RandomSampler(seed=0)
    assert create_study(sampler, storage, "old", R.ACCURACY).study_name == "old"
    with pytest.raises(UsageError, match="minimize.*another --experiment"):
        create_study(sampler, storage, "old", R.NLL)
    optuna.create_study(study_name="sft", storage=url, directions=["minimize", "minimize"])
    assert create_study(sampler, storage, "sft", R.NLL).study_name == "sft"
    with pytest.raises(UsageError, match="maximize"):
        create_study(sampler, storage, "sft", R.ACCURACY)


def test_the_prior_sampler_reads_a_minimised_score_as_evidence():
    """On a study that minimises the score, a right prior keeps its share and a negated one loses
    it, as on a maximised one (tests/test_prior_sampler.py): the evidence turns the score first."""
    from search.sampling.prior_sampler import score_gain
    from tests.test_prior_sampler import _landscape_search

    def search(sign):
        return _landscape_search(sign, trials=30, options={"handover": 0.0}, minimize=True)

    share = lambda w: w["prior"] / (w["prior"] + w["incumbent"])
    right, study = search(+1.0)
    wrong, _ = search(-1.0)
    assert score_gain(study) == -1.0
    late_right = [share(w) for _, _, w in right.sources[-8:]]
    late_wrong = [share(w) for _, _, w in wrong.sources[-8:]]
    assert min(late_right) > 0.5 and max(late_wrong) < 0.3, (late_right, late_wrong)


# ---- the learning-rate probe -------------------------------------------------------------------
def test_the_probe_chooses_the_rate_of_the_lowest_nll():
    from search.phases.calibrate import HIGH, LOW, choose_lr

    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    chosen, edge = choose_lr(lrs, [2.0, 1.2, 0.9, 1.1, None], NLL)  # None: diverged, the worst
    assert 3e-4 < chosen < 3e-3 and edge is None
    assert choose_lr(lrs, [2.0, 1.2, 0.9, 1.1, 0.7], NLL) == (1e-2, HIGH)
    assert choose_lr(lrs, [0.5, 1.2, 0.9, 1.1, None], NLL) == (1e-4, LOW)
    chosen, edge = choose_lr(lrs, [0.5, 0.6, 0.9, 0.7, None])  # accuracy: the highest
    assert 3e-4 < chosen < 3e-3 and edge is None


# ---- decisions and the recommendation ----------------------------------------------------------
def test_a_lower_nll_is_better():
    best = {0: 0.60, 1: 0.63, 2: 0.58}
    lower = {0: 0.50, 1: 0.52, 2: 0.49}
    up = decide(lower, best, 0.01, NLL)
    assert up.verdict == BETTER and up.diff > 0 and up.low > 0  # the gain of a over b
    assert "difference -0.100" in up.describe() and "upper bound" in up.describe()
    assert decide(best, lower, 0.01, NLL).verdict == WORSE
    assert decide(lower, best, 0.01).verdict == WORSE  # read as accuracy, lower is worse
    close = {0: 0.605, 1: 0.633, 2: 0.584}  # a little higher, by 0.003 to 0.005
    assert decide(close, best, 0.01, NLL).verdict == AS_GOOD
    assert decide(close, best, 0.001, NLL).verdict == WORSE
    assert decide({0: 0.5}, best, 0.01, NLL).verdict == UNDECIDED


def _records():
    """Three searched placements, each with two confirmation runs (seeds 1, 2)."""
    runs = {"big": (1000, [0.50, 0.52, 0.51]), "small": (100, [0.505, 0.523, 0.512]),
            "tiny": (50, [0.90, 0.95, 0.92])}
    out = []
    for name, (params, scores) in runs.items():
        for seed, score in enumerate(scores):
            out.append(TrialRecord(trial_id=name if seed == 0 else f"{name}-{seed}", run_id=f"run-{name}-{seed}",
                                   key=name, lr=1e-3, status=R.COMPLETED, score=score, trainable_params=params,
                                   adapter_params=params, compute_hours=0.1, seed=seed,
                                   confirms=None if seed == 0 else name, baseline="all" if name == "big" else None))
    return out


def test_the_recommendation_of_a_lower_is_better_metric():
    from search.phases.publish import frontier_of

    rec = frontier_of(_records(), margin=0.02, sense=NLL).recommendation
    assert rec.best.key == "big"  # the lowest mean nll
    assert rec.pick.key == "small" and rec.pick_vs_best.verdict == AS_GOOD
    assert rec.verdict(next(c for c in frontier_of(_records(), sense=NLL).confirmed if c.key == "tiny")) == WORSE
    tight = frontier_of(_records(), margin=0.0, sense=NLL).recommendation
    assert tight.pick.key == "big" and "lowest confirmed mean" in "\n".join(tight.lines(R.NLL))


def test_the_candidates_and_the_best_single_run_of_a_lower_is_better_metric():
    from analysis.confirmed import pick_candidates
    from analysis.report import format_table
    from search.tracking.notes import SearchFacts, default_recommendation, recommended

    searched = [r for r in _records() if r.confirms is None]
    assert recommended(searched, NLL).key == "big" and recommended(searched).key == "tiny"
    assert [r.key for r in pick_candidates(searched, top=1, baselines=0, sense=NLL)] == ["big"]
    facts = SearchFacts("e", "1", "p", "sqlite:///x.db", {R.METRIC_NAME: R.NLL})
    assert facts.sense == "min" and "Recommended: `big`" in default_recommendation(facts, searched)
    table = format_table(searched, R.NLL, R.CPU_CORE_HOURS).splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["[all]", "small", "tiny"]  # lowest first
    assert "nll down" in table[-1]


def test_the_views_sort_a_lower_is_better_score_ascending():
    from search.tracking.ui import TRIALS, view_state

    assert view_state(TRIALS, "pid", NLL)["orderByAsc"] is True
    assert view_state(TRIALS, "pid")["orderByAsc"] is False


# ---- which prior was right, and the warm start -------------------------------------------------
def test_which_prior_was_right_reads_a_lower_nll_as_a_benefit():
    from analysis.importance import features, prior_agreement
    from spaces.placement import Placement
    from spaces.scores import PriorScores
    from spaces.space import ModelSpace

    kinds = ("q", "k", "v", "o", "up", "down")
    space = ModelSpace("layers", 6, kinds, kinds, tuple(((8, 8),) * 6 for _ in kinds), (False,) * 6)
    a, b = [0.1, 0.5, 1.0, 1.5, 2.0, 3.0], [3.0, 2.0, 1.5, 1.0, 0.5, 0.1]
    rng, rows, nlls = random.Random(0), [], []
    for _ in range(60):
        ks, ls = [rng.random() < 0.5 for _ in kinds], [rng.random() < 0.5 for _ in range(6)]
        sites = [(k, l) for k in range(6) for l in range(6) if ks[k] and ls[l]] or [(0, 0)]
        p = Placement.from_sites(space, sites, rng.choice([2, 4, 8]))
        rows.append(features(p, 1e-3))
        nlls.append(1.5 - 0.004 * sum(a[k] * b[l] for k, l in p.sites()) + rng.gauss(0, 0.005))  # lower = better
    priors = PriorScores.from_summaries(kinds, [-v for v in a], b, [-v for v in b])
    verdicts = {x.prior: x.verdict for x in prior_agreement(rows, nlls, priors, bootstrap=60, sense=NLL)["agreements"]}
    assert verdicts == {"PLoP NFN (kinds)": "agreed", "CKA (layers)": "agreed", "activation (layers)": "disagreed"}


def test_a_warm_start_across_directions_is_refused(monkeypatch):
    from search.phases import warm_start as ws

    search = SimpleNamespace(cfg=SimpleNamespace(search=SimpleNamespace(warm_start="old"), model=SimpleNamespace(name="m")),
                             space=SimpleNamespace(to_dict=lambda: {"space": 1}), metric_name=R.NLL)
    monkeypatch.setattr(ws, "read_json_artifact", lambda client, run_id, name: {"space": 1})
    pspace = SimpleNamespace(distributions=dict)
    for there, ok in ((R.ACCURACY, False), (R.NLL, True)):
        monkeypatch.setattr(ws, "earlier_search", lambda client, name, m=there: {"parent": {"run_id": "p",
                                                                                           "metric_name": m},
                                                                               "rows": []})
        if ok:
            assert ws.warm_start(None, None, search, None, pspace) == 0
        else:
            with pytest.raises(UsageError, match="other way"):
                ws.warm_start(None, None, search, None, pspace)
