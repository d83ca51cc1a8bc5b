"""Property: every placement the searcher would train fits the budget, is never empty, and budget
repair is deterministic, over random model spaces, ranks, r_ref, budgets and scores.

Covers each way a placement reaches training (the *sample* step): a proposal from include flags
plus `repair` (with and without prior priorities), the hand-crafted baselines, prior draws, and the
first trials of a real prior-sampler study passed through `PlacementSpace`.
"""

import numpy as np
import optuna
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spaces.baselines import make_baselines, priorities
from spaces.scores import PriorScores
from search.sampling.prior_sampler import PlacementPrior
from search.sampling.proposal import propose
from search.sampling.samplers import SamplerInputs, make_sampler
from spaces import BudgetError, ModelSpace, Placement, make_budget

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAMILIES = ("attention.k{}", "mlp.k{}", "block.k{}")
DIMS = st.sampled_from([1, 4, 8, 16, 48, 64, 96])


@st.composite
def problems(draw):
    n_layers = draw(st.integers(1, 8))
    n_kinds = draw(st.integers(1, 7))
    kinds, shapes = [], []
    for k in range(n_kinds):
        kinds.append(draw(st.sampled_from(FAMILIES)).format(k))
        d_in, d_out = draw(DIMS), draw(DIMS)
        present = draw(st.lists(st.booleans(), min_size=n_layers, max_size=n_layers))
        shapes.append(tuple((d_in, d_out) if on else (0, 0) for on in present))
    assume(any(s != (0, 0) for row in shapes for s in row))
    space = ModelSpace("blocks", n_layers, tuple(kinds), tuple(f"a{k}" for k in range(n_kinds)),
                       tuple(shapes), (False,) * n_kinds)
    ranks = draw(st.lists(st.sampled_from([1, 2, 4, 8, 16, 32]), min_size=1, max_size=4, unique=True))
    r_ref = draw(st.integers(1, 32))
    fraction = draw(st.floats(0.0, 1.0, exclude_min=True))
    try:
        budget = make_budget(space, fraction, r_ref, min(ranks))
    except BudgetError:
        assume(False)
    scores = None
    if draw(st.booleans()):
        maybe = st.one_of(st.none(), st.floats(0.0, 3.0))
        scores = PriorScores.from_summaries(
            space.aliases, [draw(maybe) for _ in space.aliases],
            draw(st.lists(st.floats(0.0, 1.0), min_size=n_layers, max_size=n_layers)),
            draw(st.lists(maybe, min_size=n_layers, max_size=n_layers)))
    return space, budget, ranks, scores


def _trainable(p: Placement, space, budget) -> bool:
    p.checked(space)
    return budget.fits(p, space) and not p.is_empty() and len(p.rank_values()) == 1


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


@SETTINGS
@given(problems(), st.data())
def test_proposals_are_repaired_deterministically_into_the_budget(problem, data):
    space, budget, ranks, scores = problem
    prio = priorities(scores, space)
    for _ in range(3):
        kinds_on = data.draw(st.lists(st.booleans(), min_size=len(space.kinds), max_size=len(space.kinds)))
        layers_on = data.draw(st.lists(st.booleans(), min_size=space.n_layers, max_size=space.n_layers))
        rank = data.draw(st.sampled_from(ranks))
        for p in (None, prio):
            first = propose(space, budget, ranks, kinds_on, layers_on, rank, p)
            again = propose(space, budget, ranks, list(kinds_on), list(layers_on), rank, p)
            assert first == again  # same placement and the same repair log
            assert _trainable(first[0], space, budget), first
            assert max(first[0].rank_values()) in ranks


@SETTINGS
@given(problems(), st.integers(0, 2**16))
def test_baselines_and_prior_draws_fit_the_budget(problem, seed):
    space, budget, ranks, scores = problem
    baselines = make_baselines(space, budget, ranks, scores)
    assert baselines == make_baselines(space, budget, ranks, scores)
    assert len({b.placement.key for b in baselines}) == len(baselines) >= 1
    for b in baselines:
        assert _trainable(b.placement, space, budget), b
        assert max(b.placement.rank_values()) in ranks
    prio = priorities(scores, space)
    prior = PlacementPrior(space, budget, ranks, (1e-4, 1e-2), prio)
    rng = np.random.RandomState(seed)
    for _ in range(5):
        d = prior.draw(rng)
        kinds_on = [d[f"kind_{a}"] for a in space.aliases]
        layers_on = [d[f"layer_{l}"] for l in range(space.n_layers)]
        p, _ = propose(space, budget, ranks, kinds_on, layers_on, d["rank"], prio)
        assert _trainable(p, space, budget)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(problems(), st.integers(0, 2**16))
def test_the_first_trials_of_a_prior_search_fit_the_budget(problem, seed):
    space, budget, ranks, scores = problem
    setup = make_sampler("prior", SamplerInputs(space, budget, tuple(ranks), (1e-4, 1e-2), 12, seed, scores))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=setup.sampler)
    for params, attrs in setup.enqueue:
        study.enqueue_trial(params, user_attrs=attrs)
    for i in range(len(setup.enqueue) + 3):
        trial = study.ask()
        cfg = setup.space(trial)
        p = Placement.from_json(cfg["placement"])
        assert _trainable(p, space, budget)
        if i < len(setup.baselines):
            assert cfg["baseline"] == setup.baselines[i].name and p == setup.baselines[i].placement
        study.tell(trial, [0.5, p.adapter_params(space), 0.0])


@given(problems(), st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fill_takes_the_longest_prefix_of_whole_units_that_fits(problem, rnd):
    from spaces.budget import fill_units

    space, budget, ranks, _ = problem
    sites = space.sites()
    rnd.shuffle(sites)
    cuts = sorted(rnd.sample(range(1, len(sites)), min(3, len(sites) - 1))) if len(sites) > 1 else []
    units = [sites[a:b] for a, b in zip([0, *cuts], [*cuts, len(sites)])]
    rank = rnd.choice(ranks)
    filled = fill_units(space, budget, units, rank)
    taken = 0
    while taken < len(units) and budget.fits(Placement.from_sites(space, sum(units[: taken + 1], []), rank), space):
        taken += 1
    if taken == 0:
        assert filled is None
    else:
        assert filled == Placement.from_sites(space, sum(units[:taken], []), rank)
        assert budget.fits(filled, space)
