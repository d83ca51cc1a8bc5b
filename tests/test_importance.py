"""The prior-quality report recovers a known ordering on a synthetic table."""

import random

from analysis.importance import MIN_TRIALS, features, prior_agreement, spearman
from spaces.placement import Placement
from spaces.scores import PriorScores
from spaces.space import ModelSpace

KINDS = ("q", "k", "v", "o", "up", "down")


def _space():
    return ModelSpace("layers", 6, KINDS, KINDS, tuple(((8, 8),) * 6 for _ in KINDS), (False,) * 6)


def _table(n=60, seed=0):
    """Product placements whose score rises with kind value a_k and layer value b_l (plus noise)."""
    rng = random.Random(seed)
    space = _space()
    a = [0.1, 0.5, 1.0, 1.5, 2.0, 3.0]  # down helps most, q least
    b = [3.0, 2.0, 1.5, 1.0, 0.5, 0.1]  # early layers help most
    rows, scores = [], []
    for _ in range(n):
        kinds = [rng.random() < 0.5 for _ in KINDS]
        layers = [rng.random() < 0.5 for _ in range(6)]
        sites = [(k, l) for k in range(6) for l in range(6) if kinds[k] and layers[l]] or [(0, 0)]
        p = Placement.from_sites(space, sites, rng.choice([2, 4, 8]))
        rows.append(features(p, 1e-3 * rng.uniform(0.5, 2)))
        scores.append(0.5 + 0.004 * sum(a[k] * b[l] for k, l in p.sites()) + rng.gauss(0, 0.005))
    return rows, scores, a, b


def test_agreement_recovers_the_known_ordering():
    rows, scores, a, b = _table()
    priors = PriorScores.from_summaries(KINDS, [-v for v in a], b, [-v for v in b])  # NFN low = good
    report = prior_agreement(rows, scores, priors, bootstrap=100)
    verdicts = {x.prior: x.verdict for x in report["agreements"]}
    assert verdicts == {"PLoP NFN (kinds)": "agreed", "CKA (layers)": "agreed", "activation (layers)": "disagreed"}
    assert spearman(report["kind_effects"], a) > 0.8 and spearman(report["layer_effects"], b) > 0.8


def test_noise_alone_is_inconclusive_and_few_trials_say_so():
    rows, _, a, b = _table()
    rng = random.Random(1)
    noise = [0.6 + rng.gauss(0, 0.01) for _ in rows]
    priors = PriorScores.from_summaries(KINDS, [-v for v in a], b, b)
    verdicts = {x.verdict for x in prior_agreement(rows, noise, priors, bootstrap=100)["agreements"]}
    assert verdicts == {"inconclusive"}  # scores that follow nothing confirm no prior
    few = prior_agreement(rows[: MIN_TRIALS - 1], noise[: MIN_TRIALS - 1], priors)
    assert all("fewer than" in x.verdict for x in few["agreements"])


def test_spearman_ties_and_constants():
    assert spearman([1, 2, 3], [10, 20, 30]) == 1.0
    assert spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert spearman([1, 1, 1], [1, 2, 3]) is None
