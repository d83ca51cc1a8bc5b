"""Score a model's sites for a task with the placement priors, before any training.

    python search/score.py --budget 0.5                    # the offline default
    python search/score.py --config smoke --set priors.pooling=cls
    python search/score.py --config smollm2                # a real decoder, offline (SmolLM2-135M)

Where it sits: **score** -> sample. One hooked forward pass over the calibration set gives PLoP's
normalised feature norms (which module kinds), CKA between each block's input and output and
activation norms (which layers); see docs/methods.md. Prints a table per module kind and per layer
and the baselines the search would train first at this budget (`spaces.baselines`: what each
prior alone picks, fitted with the search's ranks); writes `scores.json` and a heatmap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from analysis.heatmap import plot_heatmap
from search.cli import add_common_args, config_from_args, fail
from search.runtime.errors import UsageError, user_error_types


def _f(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def describe_pooling(scores, configured: str) -> str:
    """`last (auto: a causal decoder; 127 of 128 examples, ...)`: the pooling CKA used and why."""
    kind = {True: "a causal decoder", False: "not causal", None: "causality unknown"}[scores.causal]
    why = f"auto: {kind}" if configured == "auto" else kind
    left_out = scores.n_examples - scores.cka_examples
    if scores.causal and left_out:
        why += f"; {scores.cka_examples} of {scores.n_examples} examples, one-token examples left out"
    return f"{scores.pooling} ({why})"


def format_scores(scores, space, baselines) -> str:
    """Per-kind and per-layer tables of every score, then the baselines fitted to the budget."""
    grad, kappa = scores.grad, scores.kappa
    lines = ["module kinds (mean over layers)          low NFN = adapt first (PLoP); low kappa = adapt first (KappaTune)",
             f"  {'kind':<6} {'module':<26} {'NFN':>7} {'input norm':>11}" + (f" {'kappa':>9}" if kappa else "")
             + (f" {'grad':>9}" if grad else "")]
    for k, (alias, kind) in enumerate(zip(space.aliases, space.kinds)):
        act_vals = [v for v in scores.act.per_site[k] if v is not None]  # raw mean ||x_t||
        act_mean = sum(act_vals) / len(act_vals) if act_vals else None
        row = f"  {alias:<6} {kind:<26} {_f(scores.nfn.per_kind[alias]):>7} {_f(act_mean, '.2f'):>11}"
        if kappa:
            row += f" {_f(kappa.per_kind[alias], '.1f'):>9}"
        if grad:
            row += f" {_f(grad.per_kind[alias], '.2e'):>9}"
        lines.append(row)
    lines += ["", "layers                                    high 1-CKA / high activation = adapt first",
              f"  {'layer':<6} {'CKA':>7} {'1-CKA':>7} {'activation':>11}" + (f" {'kappa':>9}" if kappa else "")]
    cka = scores.cka
    for l in range(space.n_layers):
        note = "  (zero-variance input: neutral importance)" if cka.degenerate[l] else ""
        k_l = None
        if kappa:
            values = [row[l] for row in kappa.per_site if row[l] is not None]
            k_l = sum(values) / len(values) if values else None
        lines.append(f"  {l:<6} {_f(cka.per_layer[l]):>7} {_f(cka.importance[l]):>7} "
                     f"{_f(scores.act.per_layer[l]):>11}" + (f" {_f(k_l, '.1f'):>9}" if kappa else "") + note)
    lines += ["", "the baselines at this budget (what each prior alone picks, with the search's ranks):"]
    for b in baselines:
        names = "/".join((b.name, *b.aliases))
        lines.append(f"  {names:<11} {b.placement.key}  ({b.placement.adapter_params(space):,} adapter params)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python search/score.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    args = p.parse_args(argv)
    try:
        from search.runtime.checks import check_output_dir

        check_output_dir(Path(args.output_dir))  # before the model loads
        cfg = config_from_args(args)
        from spaces.baselines import make_baselines
        from spaces.budget import make_budget
        from spaces.errors import PriorsWarning
        from trainables.prepare import prepare

        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # a CKA tie is printed below, with the table
                warnings.simplefilter("ignore", PriorsWarning)
                prep = prepare(cfg.to_dict())
            budget = make_budget(prep.space, cfg.search.budget, cfg.search.r_ref, min(cfg.search.ranks))
        except user_error_types() as e:
            raise UsageError(str(e)) from None
    except UsageError as e:
        return fail(str(e))

    space, scores = prep.space, prep.scores
    baselines = make_baselines(space, budget, list(cfg.search.ranks), scores)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores_path = out / "scores.json"
    payload = {**scores.to_dict(), "model": cfg.model.name, "data": cfg.data.source, "budget": cfg.search.budget,
               "baselines": {b.name: {**b.placement.to_dict(), "aliases": list(b.aliases)} for b in baselines}}
    scores_path.write_text(json.dumps(payload, indent=2))
    heatmap = plot_heatmap(scores, out / "scores.png")
    print(f"model: {space.describe()}")
    print(f"calibration: {scores.n_examples} examples, {scores.n_tokens} tokens; CKA pooling "
          f"{describe_pooling(scores, cfg.priors.pooling)}; priors took {prep.priors_s:.2f}s (all of prepare "
          f"{time.perf_counter() - t0:.1f}s)")
    print()
    print(format_scores(scores, space, baselines))
    warning = scores.cka_warning()
    if warning:
        print(f"\nwarning: {warning}")
    print()
    print(f"wrote {scores_path} and {heatmap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
