"""Prior-guided sampling: baselines first, then draws from the placement priors, then a mix of
random, prior and incumbent-centred draws whose prior share follows the evidence.

Where it sits: score -> **sample** -> train -> track -> frontier. An Optuna sampler for the
define-by-run space of `search.sampling.proposal.PlacementSpace` (params `kind_<alias>`, `layer_<l>`,
`rank`, `lr`), used by the searcher under Tune or by a plain Optuna study (the benchmarks).

Phases, by trial (docs/methods.md, "From scores to a search"):
(a) the baselines of `spaces.baselines`, enqueued into the study before any trial (fixed params plus
    the baseline's placement in the trial's user attrs); Optuna answers them, not this sampler.
(b) the next `n_prior` trials are prior draws: rank uniform over the allowed ranks, lr log-uniform,
    then each `kind_<a>` ~ Bernoulli(p_k) and `layer_<l>` ~ Bernoulli(q_l) independently, with
        p_k = clip(sigmoid(c + strength * z_k), floor, 1 - floor)   (q_l likewise with z_l)
    where z are the rank scores of `spaces.baselines.priorities` (lower NFN -> higher p; higher
    1 - CKA and activation -> higher q; all 0 without scores, i.e. uniform) and the shift c is
    solved per (rank, fill) so that the expected adapter params of a draw are fill x the budget,
    fill drawn uniformly from `fills` (default 0.05 ... 0.8, doubling). Not all near the budget:
    the search is multi-objective, the frontier needs cheap placements too, and the hypervolume
    weighs them heavily; aiming every draw at 0.8 of the budget reached the frontier later
    (docs/search_efficiency.md, "2. Synthetic landscapes", the `--fills 0.8` ablation).
(c) after that (`PriorOptions.adaptive`, the default), after PriorBand (Mallik et al. 2023):
    each trial comes whole from one of three sources. Random (every flag a fair coin, rank and lr
    uniform) with probability p_random = 1 / (1 + eta^r), where r = floor(log_eta(1 + completed
    trials)) grows as ASHA's rungs fill (eta = its reduction factor). The rest is split between the
    prior and what the results so far suggest (`learned = "tpe"`, the default: a joint proposal of
    multi-objective multivariate TPE, which models the good trials on every objective; or
    `"incumbent"`: the best completed trial, mutated: each flag flipped with probability
    `epsilon`, the rank kept or moved one step, the lr jittered) by the evidence for the prior
    (`prior_share`): the rank correlation between how much each completed trial's placement follows
    the prior and its score. PriorBand splits by the likelihood of the top trials under the prior
    and around the incumbent; on placements (binary flags, drawn at every size) those likelihoods
    mostly measured size, and a negated prior kept its share in replays, so the share follows the
    correlation instead. A prior the results contradict loses its share within a few completed
    trials; a prior the top trials follow keeps more of it, handing over to the learned source as
    handover / (handover + completed) (`handover` = 10, the fixed decay's tau): a prior, even a right
    one, is a fixed distribution, and past a few dozen trials the results say more (the replay
    tables with and without it: docs/search_efficiency.md, "1. Real trainings: the table and the
    replay"). (Mutating the incumbent alone chases the best score and leaves the cheap end of the
    frontier unexplored: with a misleading prior it fell far behind TPE as the learned source;
    docs/search_efficiency.md, "2. Synthetic landscapes", `learned=incumbent`.) Before
    `min_evidence` completed trials the split is all prior.
    With `adaptive = False` the earlier rule: multivariate TPE proposes every param and each is
    replaced by a prior draw's with probability w_t = w0 / (1 + t / tau), t = finished trials
    (after piBO, Hvarfner et al. 2022). The floor keeps every unit reachable however wrong the prior.
"Better score" follows the study's first direction (maximize, or minimize for a lower-is-better
metric such as `nll`: `search.sampling.study.directions`): the evidence and the incumbent read the
score turned so that higher is better (`score_gain`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import StudyDirection

from analysis.importance import spearman
from search.sampling.proposal import flag_params, is_baseline
from spaces.baselines import Priorities
from spaces.budget import Budget
from spaces.placement import Placement
from spaces.space import ModelSpace


@dataclass(frozen=True)
class PriorOptions:
    """The prior sampler's settings (ablations change them; the defaults are the product's).

    strength: logit gap between the best (z = +1) and worst (z = -1) unit is 2 x this.
    fills: expected adapter params of a prior draw / budget; 0.8 at the top leaves room for the
    spread of a draw (repair trims any overshoot). floor: every unit's probability stays in
    [floor, 1 - floor]. n_prior: prior draws after the baselines. w0, tau: the learned phase's
    prior weight w_t = w0 / (1 + t / tau) when not `adaptive`. n_startup_trials: TPE's random start.
    adaptive: the evidence-driven share of (c); eta: its random share's base; min_evidence: completed
    trials before the evidence counts; handover: the prior's share is also multiplied by
    handover / (handover + completed trials), so that a right prior still hands over to the learned
    source as results accumulate (0: the evidence alone decides).
    """

    strength: float = 3.0
    fills: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8)
    floor: float = 0.05
    n_prior: int = 2
    w0: float = 0.5
    tau: float = 10.0
    n_startup_trials: int = 3
    adaptive: bool = True
    eta: float = 2.0
    epsilon: float = 0.2
    min_evidence: int = 3
    handover: float = 10.0
    learned: str = "tpe"  # the third source: "tpe" (multi-objective TPE) or "incumbent" (mutations)

    def __post_init__(self):
        if self.n_prior < 0 or not (0.0 <= self.w0 <= 1.0) or self.tau <= 0 or self.handover < 0:
            raise ValueError(f"need n_prior >= 0, 0 <= w0 <= 1, tau > 0, handover >= 0; got {self.n_prior}, "
                             f"{self.w0}, {self.tau}, {self.handover}")

    def with_overrides(self, overrides: dict) -> "PriorOptions":
        """These options with some replaced by name (unknown names are an error)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown prior options {sorted(unknown)}; known: {sorted(known)}")
        values = {k: tuple(v) if k == "fills" else v for k, v in overrides.items()}
        return dataclasses.replace(self, **values)


def trials_of(study) -> list:
    """The study's trials for one proposal, read once: `sample_relative` hands them to every step
    that looks at them (the phase, the sources' weights, the incumbent). Every state, since the
    phase counts the baselines still running.

    With an RDB study every read re-reads each unfinished trial from the database (the finished
    ones are cached), and with many trials running those reads were most of the driver's CPU
    (docs/benchmarks.md, "Cluster scale: 1,000 simulated trials, 64 at once")."""
    return study.get_trials(deepcopy=False)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


class PlacementPrior:
    """Inclusion probabilities per kind and per layer, scaled per (rank, fill) to the budget; draws params."""
    def __init__(self, space: ModelSpace, budget: Budget, ranks: list[int], lr_range: tuple[float, float],
                 prio: Priorities, options: PriorOptions = PriorOptions()):
        self.space, self.ranks = space, sorted(ranks)
        self.lr_min, self.lr_max = lr_range
        self.prio, self.strength, self.floor = prio, options.strength, options.floor
        self.fills = tuple(options.fills)
        # widths[k][l] = d_in + d_out, 0 where the layer lacks the kind
        self._widths = [[space.site_width(k, l) if space.has_site(k, l) else 0 for l in range(space.n_layers)]
                        for k in range(len(space.kinds))]
        self._probs = {(r, f): self._solve(r, f * budget.max_params) for r in self.ranks for f in self.fills}

    def _at(self, c: float) -> tuple[list[float], list[float]]:
        lo, hi = self.floor, 1.0 - self.floor
        p = [min(hi, max(lo, _sigmoid(c + self.strength * z))) for z in self.prio.kind]
        q = [min(hi, max(lo, _sigmoid(c + self.strength * z))) for z in self.prio.layer]
        return p, q

    def _expected(self, rank: int, p: list[float], q: list[float]) -> float:
        return rank * sum(pk * ql * w for pk, row in zip(p, self._widths) for ql, w in zip(q, row))

    def _solve(self, rank: int, target: float) -> tuple[list[float], list[float]]:
        """The shift c with expected params = target, by bisection (monotone in c); clamped at the
        floor/ceiling when the target is out of reach at this rank."""
        lo, hi = -30.0, 30.0
        if self._expected(rank, *self._at(lo)) >= target:
            return self._at(lo)
        if self._expected(rank, *self._at(hi)) <= target:
            return self._at(hi)
        for _ in range(60):
            mid = (lo + hi) / 2.0
            if self._expected(rank, *self._at(mid)) < target:
                lo = mid
            else:
                hi = mid
        return self._at((lo + hi) / 2.0)

    def probabilities(self, rank: int, fill: float) -> tuple[list[float], list[float]]:
        """(per kind, per layer) inclusion probabilities of a draw at `rank` aiming at `fill`."""
        return self._probs[(rank, fill)]

    def expected_params(self, rank: int, fill: float) -> float:
        return self._expected(rank, *self._probs[(rank, fill)])

    def draw(self, rng: np.random.RandomState) -> dict[str, Any]:
        """One prior draw of every param of the define-by-run space."""
        rank = int(self.ranks[rng.randint(len(self.ranks))])
        fill = self.fills[rng.randint(len(self.fills))]
        p, q = self._probs[(rank, fill)]
        kinds_on = [bool(rng.random_sample() < pk) for pk in p]
        layers_on = [bool(rng.random_sample() < ql) for ql in q]
        lr = math.exp(rng.uniform(math.log(self.lr_min), math.log(self.lr_max)))
        lr = min(self.lr_max, max(self.lr_min, lr))  # exp(log(x)) can overshoot x by an ulp
        return flag_params(self.space, kinds_on, layers_on, rank, lr)


def score_gain(study) -> float:
    """+1 when the study maximizes its first objective (the score), -1 when it minimizes it: a
    completed trial's `values[0] * score_gain(study)` is higher the better the trial."""
    return -1.0 if study.directions[0] == StudyDirection.MINIMIZE else 1.0


def prior_weight(t: int, w0: float, tau: float) -> float:
    """w_t = w0 / (1 + t / tau): the chance each param is taken from the prior after t finished trials."""
    return w0 / (1.0 + t / tau)


class PriorSampler(BaseSampler):
    """Phases (b) and (c) of the module docstring; enqueued (baseline) trials pass through.

    search_space: the define-by-run space's distributions (`PlacementSpace.distributions()`), used
    as the relative search space of every trial so a prior draw sets all params jointly.
    """

    def __init__(self, prior: PlacementPrior, search_space: dict[str, BaseDistribution],
                 options: PriorOptions = PriorOptions(), seed: int | None = None):
        self.prior, self.n_prior, self.w0, self.tau = prior, options.n_prior, options.w0, options.tau
        self.options = options
        self.sources: list[tuple[int, str, dict]] = []  # (trial number, source, weights) per learned trial
        self._space = dict(search_space)
        self._rng = np.random.RandomState(seed)
        self._learned = TPESampler(seed=seed, multivariate=True, n_startup_trials=options.n_startup_trials)
        self._random = RandomSampler(seed=None if seed is None else seed + 1)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._learned.reseed_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        if is_baseline(trial):
            return {}
        return {name: d for name, d in self._space.items() if not d.single()}  # Optuna sets singles

    def phase(self, study, trial, trials=None) -> str:
        """The phase of a trial of this study: "baseline", "prior" or "learned" (`trials`: the
        study's trials, read here when not given)."""
        if is_baseline(trial):
            return "baseline"
        trials = study.get_trials(deepcopy=False) if trials is None else trials
        enqueued_before = sum(is_baseline(t) for t in trials if t.number < trial.number)
        return "prior" if trial.number - enqueued_before < self.n_prior else "learned"

    def sample_relative(self, study, trial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = trials_of(study)
        phase = self.phase(study, trial, trials)
        if phase == "baseline":
            return {}
        draw = self.prior.draw(self._rng)
        if phase == "prior":
            return {k: v for k, v in draw.items() if k in search_space}
        if self.options.adaptive:
            return self._adaptive(study, trial, search_space, draw, trials)
        finished = sum(t.state.is_finished() for t in trials)
        w = prior_weight(finished, self.w0, self.tau)
        learned = self._learned.sample_relative(study, trial, search_space)  # {} during TPE's startup
        out = {}
        for name, dist in search_space.items():
            if name in draw and self._rng.random_sample() < w:
                out[name] = draw[name]
            elif name in learned:
                out[name] = learned[name]
            else:
                out[name] = self._random.sample_independent(study, trial, name, dist)
        return out

    # ---- the adaptive learned phase (module docstring, (c)) ----------------------------------------
    def _flags(self, params: dict) -> tuple[list[bool], list[bool]]:
        sp = self.prior.space
        return ([bool(params.get(f"kind_{a}", False)) for a in sp.aliases],
                [bool(params.get(f"layer_{l}", False)) for l in range(sp.n_layers)])

    def weights(self, study, trials=None) -> dict[str, float]:
        """The chance that the next trial comes from each source: random, prior, incumbent
        (`trials`: the study's trials, read here when not given)."""
        o = self.options
        trials = study.get_trials(deepcopy=False) if trials is None else trials
        done = [t for t in trials if t.state.name == "COMPLETE" and t.values]
        r = math.floor(math.log(1 + len(done)) / math.log(o.eta))
        p_random = 1.0 / (1.0 + o.eta ** r)
        if len(done) < o.min_evidence:
            return {"random": p_random, "prior": 1.0 - p_random, "incumbent": 0.0}
        share = self.prior_share(done, score_gain(study))
        if o.handover > 0:
            share *= o.handover / (o.handover + len(done))
        return {"random": p_random, "prior": (1.0 - p_random) * share, "incumbent": (1.0 - p_random) * (1.0 - share)}

    def alignment(self, t) -> float | None:
        """How much a completed trial's placement follows the prior: the mean priority of its
        kinds plus the mean priority of its layers (`spaces.baselines.priorities`, in [-1, 1]
        each). Means, not sums, so that it says which units, not how many."""

        key = t.user_attrs.get("placement_key")
        if not key:
            return None
        sites = Placement.from_key(key, self.prior.space).sites()
        kinds, layers = {k for k, _ in sites}, {l for _, l in sites}
        prio = self.prior.prio
        return sum(prio.kind[k] for k in kinds) / len(kinds) + sum(prio.layer[l] for l in layers) / len(layers)

    def prior_share(self, completed, sign: float = 1.0) -> float:
        """The prior's share of the non-random draws, from the evidence: the rank correlation rho
        between the completed trials' alignment with the prior and their scores once size is
        accounted for (the residuals of a least-squares line of score on log trainable params:
        larger placements score higher whatever their units), mapped through
        1 / (1 + exp(-4 rho)) (rho +0.5 -> 0.88, 0 -> 0.5, -0.5 -> 0.12). `sign`: -1 when the score is
        lower-is-better (`score_gain`), so that the scores read higher = better."""

        rows = [(a, sign * t.values[0], math.log(max(t.values[1], 1.0))) for t in completed
                if (a := self.alignment(t)) is not None]
        if len(rows) < 3:
            return 0.5
        x = np.array([r[2] for r in rows])
        y = np.array([r[1] for r in rows])
        slope = np.polyfit(x, y, 1) if x.std() > 0 else np.array([0.0, y.mean()])
        residual = y - np.polyval(slope, x)
        rho = spearman([r[0] for r in rows], residual.tolist())
        return 0.5 if rho is None else 1.0 / (1.0 + math.exp(-4.0 * rho))

    def _adaptive(self, study, trial, search_space, draw: dict, trials) -> dict[str, Any]:
        w = self.weights(study, trials)
        u = self._rng.random_sample()
        source = "random" if u < w["random"] else "prior" if u < w["random"] + w["prior"] else "incumbent"
        self.sources.append((trial.number, source, w))
        if source == "prior":
            out = draw
        elif source == "incumbent" and self.options.learned == "tpe":
            out = self._learned.sample_relative(study, trial, search_space) or self._uniform()
        elif source == "incumbent":
            out = self._around_incumbent(trials, score_gain(study))
        else:
            out = self._uniform()
        return {k: v for k, v in out.items() if k in search_space}

    def _uniform(self) -> dict[str, Any]:
        sp, prior = self.prior.space, self.prior
        lr = math.exp(self._rng.uniform(math.log(prior.lr_min), math.log(prior.lr_max)))
        return flag_params(sp, [bool(self._rng.random_sample() < 0.5) for _ in sp.aliases],
                           [bool(self._rng.random_sample() < 0.5) for _ in range(sp.n_layers)],
                           int(prior.ranks[self._rng.randint(len(prior.ranks))]),
                           min(prior.lr_max, max(prior.lr_min, lr)))

    def _around_incumbent(self, trials, sign: float = 1.0) -> dict[str, Any]:
        prior, eps = self.prior, self.options.epsilon
        done = [t for t in trials if t.state.name == "COMPLETE" and t.values]
        best = max(done, key=lambda t: sign * t.values[0]).params
        kinds, layers = self._flags(best)
        kinds = [k != (self._rng.random_sample() < eps) for k in kinds]
        layers = [l != (self._rng.random_sample() < eps) for l in layers]
        ranks = prior.ranks
        i = ranks.index(best["rank"]) if best.get("rank") in ranks else self._rng.randint(len(ranks))
        if self._rng.random_sample() < 0.5:
            i = min(len(ranks) - 1, max(0, i + (1 if self._rng.random_sample() < 0.5 else -1)))
        lr = float(best.get("lr", math.sqrt(prior.lr_min * prior.lr_max))) * math.exp(self._rng.normal(0.0, 0.35))
        return flag_params(prior.space, kinds, layers, int(ranks[i]), min(prior.lr_max, max(prior.lr_min, lr)))

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        # Only params outside the define-by-run space, or not fixed in an enqueued trial.
        return self._learned.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._learned.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._learned.after_trial(study, trial, state, values)

