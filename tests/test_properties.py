"""Properties of the value types, over random model spaces and placements (hypothesis).

The Placement travels end to end as a dict, JSON and a short key, so every encoding must round
trip and the key must say exactly which sites carry which rank. The budget arithmetic must agree
with itself: exact adapter counts, `fits` consistent with `ratio`, and `make_budget` refusing
exactly the budgets no single site fits (with a suggested budget that does work).
(Pareto and hypervolume properties live in test_pareto.py.)
"""

import json
import math
import re

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from spaces import BudgetError, ModelSpace, Placement, make_budget, repair

ALIASES = ["q", "k", "v", "o", "qkv", "gate", "up", "down", "c_fc", "dense"]
PROPS = settings(deadline=None, max_examples=150)  # per test, not a global profile


@st.composite
def spaces(draw) -> ModelSpace:
    """A kinds x layers grid of (d_in, d_out) shapes; a few kinds missing from some layers."""
    n_kinds = draw(st.integers(1, 5))
    n_layers = draw(st.integers(1, 7))
    aliases = draw(st.lists(st.sampled_from(ALIASES), min_size=n_kinds, max_size=n_kinds, unique=True))
    dims = st.tuples(st.integers(1, 96), st.integers(1, 96))
    shapes = []
    for _ in range(n_kinds):
        row = draw(st.lists(st.one_of(dims, st.just((0, 0))), min_size=n_layers, max_size=n_layers))
        if all(s == (0, 0) for s in row):
            row[draw(st.integers(0, n_layers - 1))] = draw(dims)  # every kind exists somewhere
        shapes.append(tuple(row))
    return ModelSpace(
        block_prefix="model.layers", n_layers=n_layers, kinds=tuple(f"block.{a}_proj" for a in aliases),
        aliases=tuple(aliases), shapes=tuple(shapes), fan_in_fan_out=(False,) * n_kinds,
    )


@st.composite
def placements(draw, space: ModelSpace, ranks=st.integers(0, 64)) -> Placement:
    """Any grid of ranks on the space's existing sites (0 = no adapter)."""
    grid = [[draw(ranks) if space.has_site(k, l) else 0 for l in range(space.n_layers)]
            for k in range(len(space.kinds))]
    return Placement(space.aliases, tuple(tuple(row) for row in grid)).checked(space)


space_and_placement = spaces().flatmap(lambda s: st.tuples(st.just(s), placements(s)))


def decode_key(key: str, kinds: tuple[str, ...], n_layers: int) -> tuple[tuple[int, ...], ...]:
    """The rank grid a key describes: `r8 q[0-2,5] v[1]` or, with mixed ranks, `q[0-1]r4 q[2]r8`."""
    grid = [[0] * n_layers for _ in kinds]
    if key == "empty":
        return tuple(map(tuple, grid))
    parts = key.split(" ")
    uniform = re.fullmatch(r"r(\d+)", parts[0])
    if uniform:
        parts = parts[1:]
    for part in parts:
        m = re.fullmatch(r"([^\[\s]+)\[([\d,\-]+)\](?:r(\d+))?", part)
        assert m and (m.group(3) is None) == bool(uniform), part
        rank = int(uniform.group(1) if uniform else m.group(3))
        for run in m.group(2).split(","):
            a, _, b = run.partition("-")
            for layer in range(int(a), int(b or a) + 1):
                grid[kinds.index(m.group(1))][layer] = rank
    return tuple(map(tuple, grid))


# ---- encodings --------------------------------------------------------------------------
@PROPS
@given(space_and_placement)
def test_placement_round_trips_through_dict_and_json(sp):
    space, p = sp
    d = p.to_dict()
    assert Placement.from_dict(d) == p
    assert Placement.from_dict(json.loads(json.dumps(d))) == p  # plain JSON types only
    assert Placement.from_json(p.to_json()) == p
    assert d["key"] == p.key == Placement.from_json(p.to_json()).key
    assert Placement.from_dict(d).checked(space).adapter_params(space) == p.adapter_params(space)


@PROPS
@given(space_and_placement)
def test_key_says_exactly_which_sites_carry_which_rank(sp):
    space, p = sp
    assert decode_key(p.key, p.kinds, space.n_layers) == p.ranks


@PROPS
@given(space_and_placement)
def test_key_parses_back_to_the_placement(sp):
    space, p = sp
    if p.is_empty():
        return
    assert Placement.from_key(p.key, space) == p


@PROPS
@given(spaces().flatmap(lambda s: st.tuples(st.just(s), placements(s), placements(s))))
def test_different_placements_have_different_keys(sps):
    _, a, b = sps
    assert (a.key == b.key) == (a == b)


@PROPS
@given(spaces())
def test_space_round_trips_through_json(space):
    assert ModelSpace.from_dict(json.loads(space.to_json())) == space
    assert [space.kind_index(a) for a in space.aliases] == list(range(len(space.kinds)))


# ---- budget arithmetic ------------------------------------------------------------------
@PROPS
@given(space_and_placement)
def test_adapter_params_is_rank_times_width_summed_over_sites(sp):
    space, p = sp
    expected = 0
    for k, row in enumerate(space.shapes):
        for l, (d_in, d_out) in enumerate(row):
            expected += p.ranks[k][l] * (d_in + d_out)
    assert p.adapter_params(space) == expected
    assert Placement.full(space, 1).adapter_params(space) == sum(space.site_width(k, l) for k, l in space.sites())


@PROPS
@given(space_and_placement, st.floats(0.05, 1.0), st.sampled_from([1, 2, 4, 8, 16]))
def test_fits_agrees_with_ratio(sp, fraction, r_ref):
    space, p = sp
    try:
        budget = make_budget(space, fraction, r_ref, 1)
    except BudgetError:
        assume(False)
    assert budget.full_params == Placement.full(space, r_ref).adapter_params(space)
    assert math.isclose(budget.ratio(p, space), p.adapter_params(space) / budget.full_params)
    assert budget.fits(p, space) == (p.adapter_params(space) <= fraction * budget.full_params)
    if not math.isclose(budget.ratio(p, space), fraction, rel_tol=1e-9):  # off the boundary
        assert budget.fits(p, space) == (budget.ratio(p, space) <= fraction)


# Found by hypothesis: the suggestion 0.0725000001 printed as 0.0725, and 0.0725 x 400 < 29.
ROUNDED_DOWN = ModelSpace(block_prefix="model.layers", n_layers=4, kinds=("block.q_proj", "block.k_proj", "block.v_proj"),
                          aliases=("q", "k", "v"), shapes=(((1, 28), (0, 0), (1, 28), (0, 0)),
                                                           ((1, 28), (0, 0), (1, 28), (1, 91)),
                                                           ((0, 0), (0, 0), (96, 96), (0, 0))),
                          fan_in_fan_out=(False, False, False), model_type="")


@PROPS
@given(spaces(), st.floats(-2.0, 3.0), st.sampled_from([1, 4, 8]), st.sampled_from([1, 2, 4]))
@example(ROUNDED_DOWN, 0.0625, 1, 1)
def test_make_budget_refuses_exactly_the_budgets_no_site_fits(space, fraction, r_ref, min_rank):
    full = Placement.full(space, r_ref).adapter_params(space)
    cheapest = min(min_rank * space.site_width(k, l) for k, l in space.sites())
    if not 0.0 < fraction <= 1.0:
        with pytest.raises(BudgetError, match="outside \\(0, 1\\]"):
            make_budget(space, fraction, r_ref, min_rank)
    elif cheapest > fraction * full:
        with pytest.raises(BudgetError, match="raise --budget to at least") as e:
            make_budget(space, fraction, r_ref, min_rank)
        suggested = float(re.search(r"at least ([\d.e+-]+)", str(e.value)).group(1))
        if suggested <= 1.0:  # following the suggestion works
            assert make_budget(space, suggested, r_ref, min_rank).max_params >= cheapest
    else:
        budget = make_budget(space, fraction, r_ref, min_rank)
        assert budget.max_params == fraction * full and budget.max_params >= cheapest


@PROPS
@given(space_and_placement.filter(lambda sp: not sp[1].is_empty()), st.floats(0.05, 1.0),
       st.sampled_from([[2, 4, 8], [1, 16], [4]]))
def test_repair_fits_is_deterministic_and_never_empty(sp, fraction, ranks):
    space, p = sp
    try:
        budget = make_budget(space, fraction, 8, min(ranks))
    except BudgetError:
        assume(False)
    uniform = Placement.from_sites(space, p.sites(), max(ranks))
    fixed, steps = repair(uniform, space, budget, ranks)
    assert budget.fits(fixed, space) and not fixed.is_empty()
    assert repair(uniform, space, budget, ranks) == (fixed, steps)
    if budget.fits(uniform, space):
        assert (fixed, steps) == (uniform, [])  # nothing to repair
    else:
        assert steps and fixed.adapter_params(space) < uniform.adapter_params(space)
