"""Hand-crafted baseline placements, each fitted to the budget: what a practitioner would try first.

Where it sits: score -> **sample** -> train -> track -> frontier. The prior sampler
(`search.sampling.prior_sampler`) enqueues these as the first trials of a search, so every report shows the
hand-crafted strategies side by side with what the search found (docs/methods.md, "From scores to
a search"); `search/score.py` prints them as "what each prior alone picks". Torch-free: it reads a
`spaces.scores.PriorScores`. This is the one place that turns scores into whole placements.

The baselines, in this order (the last four need scores):
- all:        every site;
- attention:  the attention kinds (names with `attention`/`attn`), all layers;
- mlp:        the MLP kinds (`mlp`, `intermediate`, BERT's bare `output.dense`, ...), all layers;
- plop:       kinds in ascending layer-averaged NFN, each at all its layers, added while in budget;
- cka:        layers in descending importance (1 - CKA), each with all its kinds, added while in budget;
- activation: layers in descending normalised activation norm, all kinds, added while in budget;
- plop_x_cka: the lowest-NFN half of the kinds x layers in CKA order, added while in budget;
- kappa:      single sites in ascending condition number (KappaTune; PEFT's
              `find_kappa_target_modules` order), added while in budget (needs `scores.kappa`).

All start at rank r0 = the largest allowed rank <= r_ref (else the smallest allowed rank). The first
three are fitted by `spaces.budget.repair` (lower the rank first, then drop the lowest-prior unit);
the greedy ones add whole units while the placement fits at r0 and, if not even the first unit
fits, repair that unit the same way. Every baseline is a uniform-rank, non-empty, within-budget
placement. Two baselines with the same placement keep the first name; the others become aliases.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from spaces.budget import Budget, fill_units, repair
from spaces.placement import Placement
from spaces.scores import PriorScores
from spaces.space import ModelSpace

ATTENTION_TOKENS = ("attention", "attn")
MLP_TOKENS = ("mlp", "intermediate", "ffn", "feed_forward", "densereludense", "fc1", "fc2",
              "dense_h_to_4h", "dense_4h_to_h")


class Baseline(NamedTuple):
    name: str
    placement: Placement
    aliases: tuple[str, ...] = ()  # names of later baselines that gave the same placement


class Priorities(NamedTuple):
    """Per kind and per layer, in [-1, 1]: higher = adapt first, and keep longer under repair."""

    kind: list[float]
    layer: list[float]


# ---- reading the scores ------------------------------------------------------------------------
def kind_family(kind: str) -> str | None:
    """The family of a module kind ("attention", "mlp" or None), from its name relative to a block.

    Attention is tested first, so BERT's `attention.output.dense` is attention while its bare
    `output.dense` (the MLP down projection) is MLP.
    """
    name = kind.lower()
    if any(t in name for t in ATTENTION_TOKENS):
        return "attention"
    if any(t in name for t in MLP_TOKENS) or name == "output.dense":
        return "mlp"
    return None


def rank_scores(values: list[float | None], higher_first: bool) -> list[float]:
    """Scores -> [-1, 1] by rank: best +1, worst -1, ties share their mean rank.

    Ranks, not raw values, so that NFN, 1 - CKA and activation norms (different units and spreads)
    combine on a common footing. None (no score) and a single scored unit map to 0: no information.
    """
    known = sorted((v for v in values if v is not None), reverse=higher_first)
    if len(known) < 2:
        return [0.0] * len(values)
    positions: dict[float, list[int]] = {}
    for i, v in enumerate(known):
        positions.setdefault(v, []).append(i)
    top = len(known) - 1
    return [0.0 if v is None else 1.0 - 2.0 * (sum(positions[v]) / len(positions[v])) / top for v in values]


def priorities(scores: PriorScores | None, space: ModelSpace) -> Priorities:
    """Kinds by PLoP (lower NFN first); layers by the mean of their CKA-importance and activation
    ranks. Without scores, all zero (uniform)."""
    if scores is None:
        return Priorities([0.0] * len(space.kinds), [0.0] * space.n_layers)
    scores.check(space)
    kind = rank_scores(scores.kind_nfn(), higher_first=False)
    cka = rank_scores(list(scores.cka.importance), higher_first=True)
    act = rank_scores(list(scores.act.per_layer), higher_first=True)
    return Priorities(kind, [(c + a) / 2.0 for c, a in zip(cka, act)])


def _order(values: list[float | None], descending: bool) -> list[int]:
    """Indices best first; None last; ties by index."""
    sign = -1.0 if descending else 1.0
    return sorted(range(len(values)), key=lambda i: (values[i] is None, sign * (values[i] or 0.0), i))


# ---- fitting to the budget -------------------------------------------------------------------
def start_rank(ranks: list[int], r_ref: int) -> int:
    below = [r for r in ranks if r <= r_ref]
    return max(below) if below else min(ranks)


def _repaired(space, budget, ranks, sites, rank, prio: Priorities) -> Placement:
    return repair(Placement.from_sites(space, sites, rank), space, budget, ranks, prio.kind, prio.layer)[0]


def _fill(space, budget, ranks, units, rank, prio: Priorities) -> Placement:
    """Whole units (lists of sites) in order at `rank` while the placement fits; never empty."""
    filled = fill_units(space, budget, units, rank)
    if filled is not None:
        return filled
    return _repaired(space, budget, ranks, next(u for u in units if u), rank, prio)


def make_baselines(
    space: ModelSpace, budget: Budget, ranks: list[int], scores: PriorScores | None = None
) -> list[Baseline]:
    """The baselines of the module docstring, in order, deduplicated by placement key."""
    prio = priorities(scores, space)
    r0 = start_rank(ranks, budget.r_ref)
    n_kinds, n_layers = len(space.kinds), space.n_layers
    by_kind = [[(k, l) for l in range(n_layers) if space.has_site(k, l)] for k in range(n_kinds)]

    def layer_units(kinds):
        return [[(k, l) for k in kinds if space.has_site(k, l)] for l in range(n_layers)]

    candidates: list[tuple[str, Placement]] = [("all", _repaired(space, budget, ranks, space.sites(), r0, prio))]
    for family in ("attention", "mlp"):
        sites = [s for k in range(n_kinds) if kind_family(space.kinds[k]) == family for s in by_kind[k]]
        if sites:
            candidates.append((family, _repaired(space, budget, ranks, sites, r0, prio)))
    if scores is not None:
        scores.check(space)
        kinds_low_nfn = [k for k in _order(scores.kind_nfn(), descending=False) if by_kind[k]]
        layers_cka = _order(list(scores.cka.importance), descending=True)
        layers_act = _order(list(scores.act.per_layer), descending=True)
        half = kinds_low_nfn[: max(1, math.ceil(len(kinds_low_nfn) / 2))]  # PLoP's kinds for the product
        by_layer, half_by_layer = layer_units(range(n_kinds)), layer_units(half)
        candidates += [
            ("plop", _fill(space, budget, ranks, [by_kind[k] for k in kinds_low_nfn], r0, prio)),
            ("cka", _fill(space, budget, ranks, [by_layer[l] for l in layers_cka], r0, prio)),
            ("activation", _fill(space, budget, ranks, [by_layer[l] for l in layers_act], r0, prio)),
            ("plop_x_cka", _fill(space, budget, ranks, [half_by_layer[l] for l in layers_cka], r0, prio)),
        ]
        if scores.kappa is not None:
            by_kappa = sorted(space.sites(), key=lambda s: (scores.kappa.per_site[s[0]][s[1]] is None,
                                                            scores.kappa.per_site[s[0]][s[1]] or 0.0, s))
            candidates.append(("kappa", _fill(space, budget, ranks, [[s] for s in by_kappa], r0, prio)))
    out: list[Baseline] = []
    by_key: dict[str, int] = {}
    for name, placement in candidates:
        assert budget.fits(placement, space) and not placement.is_empty(), name
        if placement.key in by_key:
            i = by_key[placement.key]
            out[i] = out[i]._replace(aliases=out[i].aliases + (name,))
        else:
            by_key[placement.key] = len(out)
            out.append(Baseline(name, placement))
    return out


def inverse_plop(space: ModelSpace, budget: Budget, ranks: list[int], scores: PriorScores) -> Placement:
    """PLoP's pick turned over: the kinds in descending layer-averaged NFN (those PLoP ranks last
    first), each at all its layers, added while in budget, at rank r0. The control of PLoP's own
    comparison (its "inverse" placement); a benchmark arm (`benchmarks.placement_table
    --baselines`), not a search baseline."""
    scores.check(space)
    by_kind = [[(k, l) for l in range(space.n_layers) if space.has_site(k, l)] for k in range(len(space.kinds))]
    kinds = [k for k in _order(scores.kind_nfn(), descending=True) if by_kind[k]]
    return _fill(space, budget, ranks, [by_kind[k] for k in kinds], start_rank(ranks, budget.r_ref),
                 priorities(scores, space))


def select_baselines(baselines: list[Baseline], cap: int) -> list[Baseline]:
    """At most `cap` baselines, ordered by what each adds: `all` (the reference) first, then each
    time the one whose sites differ most from those already chosen (largest smallest Jaccard
    distance between site sets; ties keep the original order)."""
    if cap <= 0 or not baselines:
        return []
    chosen = [baselines[0]]
    rest = list(baselines[1:])

    def distance(a: Baseline, b: Baseline) -> float:
        sa, sb = set(a.placement.sites()), set(b.placement.sites())
        return 1.0 - len(sa & sb) / len(sa | sb)

    while rest and len(chosen) < cap:
        best = max(rest, key=lambda b: (min(distance(b, c) for c in chosen), -rest.index(b)))
        chosen.append(best)
        rest.remove(best)
    return chosen


def product_flags(placement: Placement, space: ModelSpace) -> tuple[list[bool], list[bool], int]:
    """The include flags and rank whose kinds x layers product covers `placement`: exactly its
    sites when it is a product at one rank, its bounding product otherwise."""
    sites = placement.sites()
    kinds = {k for k, _ in sites}
    layers = {l for _, l in sites}
    return ([k in kinds for k in range(len(space.kinds))], [l in layers for l in range(space.n_layers)],
            max(placement.rank_values()))
