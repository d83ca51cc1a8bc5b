"""The prior sampler and the baselines (the *sample* step), driven through the searcher's Tune hooks
without a cluster: baselines come first and in order, prior draws follow the scores and the budget,
the learned phase mixes the prior in at a decaying weight, and outcomes reach Optuna correctly."""

import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.sampling.prior_sampler import PlacementPrior, PriorOptions, PriorSampler, prior_weight
from search.sampling.proposal import propose
from search.sampling.samplers import SamplerInputs, make_sampler
from search.tuning.searcher import make_searcher
from spaces import Placement, make_budget
from search.sampling.samplers import baseline_cap
from spaces.baselines import kind_family, make_baselines, priorities, product_flags, rank_scores, select_baselines
from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables.config import load_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
KINDS = ("attention.self.query", "attention.self.value", "attention.output.dense", "intermediate.dense",
         "output.dense")
ALIASES = ("q", "v", "o", "up", "down")
FINAL = {"epoch": 2, "epoch_score": 0.8, "score": 0.8, "trainable_params": 100, "compute_hours": 0.01}


def _space(n_layers=4):
    sq, wide = ((16, 16),) * n_layers, ((16, 64),) * n_layers
    return ModelSpace("enc.layer", n_layers, KINDS, ALIASES, (sq, sq, sq, wide, tuple((b, a) for a, b in wide)),
                      (False,) * 5)


def _scores(space, nfn=(2.5, 0.9, 1.0, 1.4, 1.1), importance=(0.1, 0.5, 0.3, 0.05), act=(0.9, 1.3, 1.0, 0.8)):
    return PriorScores.from_summaries(space.aliases, nfn, importance, act)


def _inputs(space, budget, ranks=(2, 4, 8), lr=(1e-3, 1e-2), trials=12, scores=None):
    return SamplerInputs(space, budget, tuple(ranks), lr, trials, 0, scores)


def _searcher(trials=20, scores="default", budget=0.4):
    cfg = load_config(["smoke"], [f"search.trials={trials}", "search.sampler='prior'", "search.ranks=[2, 4, 8]"])
    space = _space()
    b = make_budget(space, budget, 8, 2)
    scores = _scores(space) if scores == "default" else scores
    return make_searcher(SamplerInputs.from_config(space, b, cfg, scores), "prior"), space, b, scores


# ---- baselines -----------------------------------------------------------------------------
def test_kind_families_from_module_names():
    attention = ["attention.self.query", "attention.output.dense", "attn.c_attn", "attn.c_proj",
                 "self_attn.q_proj", "layer.0.SelfAttention.q"]
    mlp = ["intermediate.dense", "output.dense", "mlp.c_fc", "mlp.c_proj", "mlp.down_proj", "ffn.lin1"]
    assert [kind_family(k) for k in attention] == ["attention"] * len(attention)
    assert [kind_family(k) for k in mlp] == ["mlp"] * len(mlp)
    assert kind_family("pooler.dense") is None


def test_rank_scores_ties_and_missing():
    assert rank_scores([3.0, 1.0, 2.0], higher_first=True) == [1.0, -1.0, 0.0]
    assert rank_scores([3.0, 1.0, 2.0], higher_first=False) == [-1.0, 1.0, 0.0]
    assert rank_scores([1.0, 1.0, None, 0.0], higher_first=True) == [0.5, 0.5, 0.0, -1.0]
    assert rank_scores([None, 5.0], higher_first=True) == [0.0, 0.0]


def test_structural_baselines_without_scores():
    space = _space()
    budget = make_budget(space, 0.4, 8, 2)
    got = make_baselines(space, budget, [2, 4, 8])
    assert [b.name for b in got] == ["all", "attention", "mlp"]
    keys = {b.name: b.placement.key for b in got}
    # full at r8: 4 layers x (3 x 32 + 2 x 80) x 8 = 8192, so the budget is 3276.8 adapter params
    assert keys["attention"] == "r8 q[0-3] v[0-3] o[0-3]"  # 4 x 96 x 8 = 3072
    assert keys["mlp"] == "r4 up[0-3] down[0-3]" and keys["all"] == "r2 q[0-3] v[0-3] o[0-3] up[0-3] down[0-3]"
    for b in got:
        assert budget.fits(b.placement, space) and not b.placement.is_empty()


def test_prior_baselines_follow_the_scores_and_dedupe():
    space = _space()
    budget = make_budget(space, 0.4, 8, 2)
    got = make_baselines(space, budget, [2, 4, 8], _scores(space))
    by_name = {b.name: b for b in got}
    assert [b.name for b in got][:3] == ["all", "attention", "mlp"]
    # lowest NFN: v (0.9) then o (1.0); up (1.4 but 80 wide) no longer fits at r8
    assert by_name["plop"].placement.key == "r8 v[0-3] o[0-3]"
    assert by_name["cka"].placement.key == "r8 q[1] v[1] o[1] up[1] down[1]"  # layer 1 most important
    assert by_name["cka"].aliases == ("activation",)  # layer 1 also has the top activation: same placement
    assert by_name["plop_x_cka"].placement.key == "r8 v[1-2] o[1-2] down[1-2]"  # 3 lowest-NFN kinds
    names_and_aliases = [n for b in got for n in (b.name, *b.aliases)]
    assert sorted(names_and_aliases) == sorted(["all", "attention", "mlp", "plop", "cka", "activation", "plop_x_cka"])
    assert len({b.placement.key for b in got}) == len(got)


def test_product_flags_cover_the_placement():
    space = _space()
    p = Placement.from_sites(space, [(1, 0), (1, 2), (3, 0), (3, 2)], 4)
    kinds, layers, rank = product_flags(p, space)
    assert (kinds, layers, rank) == ([False, True, False, True, False], [True, False, True, False], 4)
    assert propose(space, make_budget(space, 1.0, 8, 2), [2, 4, 8], kinds, layers, rank)[0] == p


# ---- prior probabilities and repair ---------------------------------------------------------
def test_prior_probabilities_follow_the_scores_and_the_budget():
    space = _space()
    budget = make_budget(space, 0.4, 8, 2)
    prio = priorities(_scores(space), space)
    prior = PlacementPrior(space, budget, [2, 4, 8], (1e-3, 1e-2), prio, PriorOptions(fills=(0.2, 0.8)))
    p, q = prior.probabilities(8, 0.8)
    assert np.argsort(p).tolist() == [0, 3, 4, 2, 1]  # ascending probability = descending NFN
    assert q[1] == max(q) and q[3] == min(q)  # layer 1: top CKA and activation; layer 3: bottom
    for fill in (0.2, 0.8):
        assert prior.expected_params(8, fill) == pytest.approx(fill * budget.max_params, rel=1e-6)
    p_lo, _ = prior.probabilities(8, 0.2)
    assert all(a < b for a, b in zip(p_lo, p))
    # without scores: uniform over kinds and over layers, still scaled to the budget
    flat = PlacementPrior(space, budget, [2, 4, 8], (1e-3, 1e-2), priorities(None, space), PriorOptions(fills=(0.5,)))
    p, q = flat.probabilities(4, 0.5)
    assert len(set(p)) == 1 and len(set(q)) == 1
    assert flat.expected_params(4, 0.5) == pytest.approx(0.5 * budget.max_params, rel=1e-6)


def test_repair_drops_the_lowest_prior_unit():
    space = _space()
    budget = make_budget(space, 0.05, 8, 2)  # 409.6 adapter params; q, v, o at r2 on 4 layers: 768
    prio = priorities(_scores(space, act=(0.8, 1.3, 1.0, 0.9)), space)  # kind q: -1, layers >= -2/3
    on = [True, True, True, False, False]
    p, steps = propose(space, budget, [2], on, [True] * 4, 2, prio)
    assert steps[0] == "dropped kind q"  # highest NFN of the three
    plain, plain_steps = propose(space, budget, [2], on, [True] * 4, 2)
    assert plain_steps[0] == "dropped layer 3"  # no priorities: ties drop the last layer first
    # the prior sampler's define-by-run space repairs with these priorities; tpe and random do not
    scores = _scores(space, act=(0.8, 1.3, 1.0, 0.9))
    pspace = make_sampler("prior", _inputs(space, budget, [2], scores=scores)).space
    assert (pspace.priorities.kind, pspace.priorities.layer) == (prio.kind, prio.layer)
    assert make_sampler("tpe", _inputs(space, budget, [2], scores=scores)).space.priorities is None


# ---- the searcher ---------------------------------------------------------------------------
def test_first_suggestions_are_the_baselines_in_order_then_outcomes_reach_optuna():
    searcher, space, budget, scores = _searcher(trials=20)
    expected = select_baselines(make_baselines(space, budget, [2, 4, 8], scores), baseline_cap(20))
    configs = [searcher.suggest(f"t{i}") for i in range(len(expected) + 3)]
    assert [c["baseline"] for c in configs[: len(expected)]] == [b.name for b in expected]
    assert [c["placement_key"] for c in configs[: len(expected)]] == [b.placement.key for b in expected]
    assert all(c["baseline"] is None for c in configs[len(expected):])
    lrs = {c["lr"] for c in configs[: len(expected)]}
    lr_min, lr_max = searcher.space.lr_min, searcher.space.lr_max
    assert len(lrs) == 1 and lrs.pop() == pytest.approx((lr_min * lr_max) ** 0.5)  # one lr for all baselines
    for c in configs:
        p = Placement.from_json(c["placement"]).checked(space)
        assert budget.fits(p, space) and not p.is_empty() and c["rank"] in (2, 4, 8)

    searcher.on_trial_result("t0", {"epoch": 1, "epoch_score": 0.5})  # must not raise
    searcher.on_trial_complete("t0", FINAL)
    searcher.on_trial_complete("t1", {"epoch": 1, "epoch_score": 0.4, "trainable_params": 90, "compute_hours": 0.001})
    searcher.on_trial_complete("t2", None, error=True)
    states = [t.state for t in searcher.study.get_trials(deepcopy=False)[:3]]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]  # an error: no outcome yet
    assert searcher.study.get_trials()[0].values == [0.8, 100.0]  # measured time is not told (search.sampling.study)
    assert searcher.study.get_trials()[0].user_attrs["baseline"] == "all"


def test_the_search_runs_through_every_phase_within_budget():
    searcher, space, budget, _ = _searcher(trials=24)
    sampler = searcher.study.sampler
    phases, keys = [], set()
    for i in range(24):
        cfg = searcher.suggest(f"t{i}")
        number = searcher.trial_number(f"t{i}")
        phases.append(sampler.phase(searcher.study, searcher.study.get_trials(deepcopy=False)[number]))
        p = Placement.from_json(cfg["placement"]).checked(space)
        assert budget.fits(p, space) and not p.is_empty()
        keys.add(p.key)
        result = {**FINAL, "score": 0.5 + 0.01 * p.n_sites} if i % 5 else {"epoch_score": 0.3}
        searcher.on_trial_complete(f"t{i}", result)
    n_base = len(select_baselines(make_baselines(space, budget, [2, 4, 8], _scores(space)), baseline_cap(24)))
    assert phases == ["baseline"] * n_base + ["prior"] * 4 + ["learned"] * (24 - n_base - 4)
    assert len(keys) > 10
    states = {t.state for t in searcher.study.get_trials(deepcopy=False)}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}
    restored = pickle.loads(pickle.dumps(searcher))  # Tune checkpoints the searcher
    assert restored.suggest("again")["placement_key"]


def test_without_scores_the_three_structural_baselines_come_first():
    searcher, space, budget, _ = _searcher(scores=None)
    names = [searcher.suggest(f"t{i}")["baseline"] for i in range(5)]
    # all first; then the one that differs most from it: mlp (8 of its 20 sites) before attention (12)
    assert names == ["all", "mlp", "attention", None, None]


def test_baselines_are_capped_at_a_third_of_the_trials_and_ordered_by_what_they_add():
    space = _space()
    budget = make_budget(space, 0.4, 8, 2)
    every = make_baselines(space, budget, [2, 4, 8], _scores(space))
    assert len(every) == 6  # all, attention, mlp, plop, cka (= activation), plop_x_cka
    for trials, cap in ((3, 1), (12, 4), (30, 10)):
        assert baseline_cap(trials) == cap
        picked = select_baselines(every, cap)
        assert len(picked) == min(cap, len(every)) and picked[0].name == "all"
        assert len({b.placement.key for b in picked}) == len(picked)
    four = select_baselines(every, 4)
    # each next one is the farthest (smallest Jaccard distance to those chosen, maximised)
    def dist(a, b):
        sa, sb = set(a.placement.sites()), set(b.placement.sites())
        return 1 - len(sa & sb) / len(sa | sb)
    for i in range(1, 4):
        rest = [b for b in every if b not in four[:i]]
        best = max(min(dist(b, c) for c in four[:i]) for b in rest)
        assert min(dist(four[i], c) for c in four[:i]) == best
    searcher, _, _, _ = _searcher(trials=12)
    names = [searcher.suggest(f"t{i}")["baseline"] for i in range(6)]
    assert names[:4] == [b.name for b in four] and names[4:] == [None, None]


def test_learned_phase_mixes_the_prior_in_with_a_decaying_weight():
    assert prior_weight(0, 0.5, 10) == 0.5 and prior_weight(10, 0.5, 10) == 0.25
    assert prior_weight(90, 0.5, 10) == pytest.approx(0.05)
    space = _space()
    budget = make_budget(space, 0.4, 8, 2)
    setup = make_sampler("prior", _inputs(space, budget, trials=30, scores=_scores(space)))
    dists = setup.space.distributions()
    prior_params = {**{n: True for n in dists if n.startswith(("kind_", "layer_"))}, "rank": 2, "lr": 1e-3}
    learned_params = {**{n: False for n in dists if n.startswith(("kind_", "layer_"))}, "rank": 8, "lr": 1e-2}

    def run(w0):
        sampler = PriorSampler(setup.sampler.prior, dists, PriorOptions(n_prior=0, w0=w0, tau=1e9, adaptive=False), seed=0)
        sampler.prior.draw = lambda rng: dict(prior_params)
        sampler._learned.sample_relative = lambda study, trial, space: dict(learned_params)
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
        trial = study.ask()
        setup.space(trial)
        assert trial.distributions == dists  # the relative space is exactly what the trial suggests
        return trial.params

    assert run(1.0) == prior_params
    assert run(0.0) == learned_params


def test_single_valued_rank_and_lr_still_reach_the_learned_phase():
    space = _space(n_layers=3)
    budget = make_budget(space, 0.5, 8, 8)
    setup = make_sampler("prior", _inputs(space, budget, [8], (1e-3, 1e-3)))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=setup.sampler)
    for params, attrs in setup.enqueue:
        study.enqueue_trial(params, user_attrs=attrs)
    for _ in range(12):
        trial = study.ask()
        p = Placement.from_json(setup.space(trial)["placement"])
        assert budget.fits(p, space) and trial.params["rank"] == 8 and trial.params["lr"] == 1e-3
        study.tell(trial, [p.n_sites / 15, p.adapter_params(space), 0.0])
    assert setup.sampler.phase(study, study.trials[-1]) == "learned"


# ---- the adaptive prior weight (PriorBand-style), replayed on landscapes with a known answer ---
def _landscape_search(sign: float, trials: int = 36, seed: int = 0, options: dict | None = None,
                      minimize: bool = False):
    """A search on a landscape where kind k and layer l are worth a_k * b_l; the priors point the
    right way (sign +1) or exactly the wrong way (sign -1). With `minimize`, the study minimises
    the score and is told an NLL-like loss, lower the better the placement (the same landscape
    turned over). Returns the sampler and the study."""
    import math

    space = _space(n_layers=6)
    a = [0.2, 0.5, 1.0, 2.0, 3.0]  # down is the best kind, q the worst
    b = [3.0, 2.0, 1.0, 0.5, 0.3, 0.2]  # early layers are the best
    scores = PriorScores.from_summaries(space.aliases, [1.5 - sign * 0.3 * x for x in a],
                                        [0.3 + sign * 0.05 * y for y in b], [1.0 + sign * 0.1 * y for y in b])
    budget = make_budget(space, 0.4, 8, 2)
    setup = make_sampler("prior", SamplerInputs(space, budget, (2, 4, 8), (1e-3, 1e-2), trials, seed, scores),
                         options)
    study = optuna.create_study(directions=["minimize" if minimize else "maximize", "minimize", "minimize"],
                                sampler=setup.sampler)
    for params, attrs in setup.enqueue:
        study.enqueue_trial(params, user_attrs=attrs)
    full = sum(a[k] * b[l] for k, l in space.sites())
    for _ in range(trials):
        trial = study.ask()
        p = Placement.from_json(setup.space(trial)["placement"])
        signal = sum(a[k] * b[l] * (p.ranks[k][l] / 8) ** 0.5 for k, l in p.sites())
        gain = 1 - math.exp(-signal / (0.2 * full))
        study.tell(trial, [2.0 - 1.5 * gain if minimize else 0.5 + 0.4 * gain, p.adapter_params(space), 0.0])
    return setup.sampler, study


def _prior_share(weights):
    rest = weights["prior"] + weights["incumbent"]
    return weights["prior"] / rest


def test_the_prior_keeps_its_weight_where_it_is_right_and_loses_it_where_it_is_negated():
    # the evidence alone (no handover): a right prior keeps most of the share, a negated one loses it
    right, study_right = _landscape_search(+1.0, options={"handover": 0.0})
    wrong, study_wrong = _landscape_search(-1.0, options={"handover": 0.0})
    late_right = [_prior_share(w) for _, _, w in right.sources[-10:]]
    late_wrong = [_prior_share(w) for _, _, w in wrong.sources[-10:]]
    assert min(late_right) > 0.5 and max(late_wrong) < 0.2, (late_right, late_wrong)
    # the random share shrinks as completed trials accumulate
    assert right.sources[-1][2]["random"] < right.sources[0][2]["random"]
    # and the search itself does better with the right prior (same seed, same budget)
    best = lambda s: max(t.values[0] for t in s.trials if t.values)  # noqa: E731
    assert best(study_right) >= best(study_wrong)


def test_a_proposal_reads_the_rdb_study_once(tmp_path):
    # With an RDB study every read of the trials re-reads each unfinished trial from the database;
    # with many trials running those reads were most of the driver's CPU. In the learned phase the
    # prior sampler reads the study once per proposal, however many of its steps look at the
    # trials. (Optuna's ask and its TPE make reads of their own.)
    import traceback

    space = _space(n_layers=4)
    budget = make_budget(space, 0.5, 8, 2)
    # (no handover, so that the 8 proposals below come from every source, the prior's included)
    setup = make_sampler("prior", _inputs(space, budget, trials=30, scores=_scores(space)), {"handover": 0.0})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=setup.sampler, storage=storage)
    for params, attrs in setup.enqueue:
        study.enqueue_trial(params, user_attrs=attrs)
    for i in range(20):
        trial = study.ask()
        p = Placement.from_json(setup.space(trial)["placement"])
        if i % 4 != 3:  # every fourth left RUNNING, as trials in flight are
            study.tell(trial, [p.n_sites / 20, p.adapter_params(space), 0.0])
    ours = []
    inner = study._storage.get_all_trials

    def spy(*args, **kwargs):
        stack = traceback.extract_stack()
        ours.append(any(Path(f.filename).parts[-3:] == ("search", "sampling", "prior_sampler.py") for f in stack)
                    and not any("_tpe" in Path(f.filename).parts for f in stack))
        return inner(*args, **kwargs)

    study._storage.get_all_trials = spy
    sources = set()
    for _ in range(8):
        ours.clear()
        trial = study.ask()
        setup.space(trial)
        sources.add(setup.sampler.sources[-1][1])
        assert sum(ours) == 1, ours
        study.tell(trial, [0.5, 10.0, 0.0])
    assert {"prior", "incumbent"} <= sources | {"random"} and len(sources) > 1


def test_a_right_prior_hands_over_to_the_results_as_they_accumulate():
    right, _ = _landscape_search(+1.0)  # the default handover
    wrong, _ = _landscape_search(-1.0)
    evidence, _ = _landscape_search(+1.0, options={"handover": 0.0})
    shares = [_prior_share(w) for _, _, w in right.sources]
    # the share of a right prior falls as trials complete, below what the evidence alone gives it ...
    assert shares[-1] < shares[0] and shares[-1] < 0.5 * _prior_share(evidence.sources[-1][2]), shares
    # ... and still stays above a negated prior's
    late_wrong = [_prior_share(w) for _, _, w in wrong.sources[-10:]]
    assert min(shares[-10:]) > 2 * max(late_wrong), (shares[-10:], late_wrong)


def test_inverse_plop_takes_the_kinds_plop_ranks_last_first():
    from spaces.baselines import inverse_plop

    space = _space()
    budget = make_budget(space, 0.4, 8, 2)
    p = inverse_plop(space, budget, [2, 4, 8], _scores(space))
    # highest NFN first: q (2.5); then up (1.4, 80 wide) no longer fits at r8, which ends the fill
    # (as PLoP's own pick ends at its first kind that does not fit)
    assert p.key == "r8 q[0-3]", p.key
    assert budget.fits(p, space)
    plop = {b.name: b for b in make_baselines(space, budget, [2, 4, 8], _scores(space))}["plop"].placement
    assert "q" not in plop.key  # PLoP's own pick leaves out the kind its inverse starts from
