"""Score a model's sites for a task with the three placement priors, before any training.

    python search/score.py --budget 0.5                    # the offline default
    python search/score.py --config smoke --set priors.pooling=cls

Where it sits: **score** -> sample. One hooked forward pass over the calibration set gives PLoP's
normalised feature norms (which module kinds), CKA between each block's input and output and
activation norms (which layers); see METHODS.md. Prints a table per module kind and per layer and
the placement each method alone would choose at the budget; writes `scores.json` and a heatmap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)] if __package__ in (None, "") else []

from search.cli import UsageError, add_common_args, config_from_args, fail  # noqa: E402


def _f(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_scores(scores: dict, space, choices: dict) -> str:
    """Per-kind and per-layer tables of every score, then each method's choice."""
    grad = scores.get("grad")
    lines = ["module kinds (mean over layers)          low NFN = adapt first (PLoP)",
             f"  {'kind':<6} {'module':<26} {'NFN':>7} {'input norm':>11}" + (f" {'grad':>9}" if grad else "")]
    act_site = scores["act"]["per_site"]  # raw mean ||x_t||; per layer it is normalised per kind
    for k, (alias, kind) in enumerate(zip(space.aliases, space.kinds)):
        act_vals = [v for v in act_site[k] if v is not None]
        act_mean = sum(act_vals) / len(act_vals) if act_vals else None
        row = f"  {alias:<6} {kind:<26} {_f(scores['nfn']['per_kind'][alias]):>7} {_f(act_mean, '.2f'):>11}"
        if grad:
            row += f" {_f(grad['per_kind'][alias], '.2e'):>9}"
        lines.append(row)
    lines += ["", "layers                                    high 1-CKA / high activation = adapt first",
              f"  {'layer':<6} {'CKA':>7} {'1-CKA':>7} {'activation':>11}"]
    cka = scores["cka"]
    for l in range(space.n_layers):
        note = "  (zero-variance input: neutral importance)" if cka["degenerate"][l] else ""
        lines.append(f"  {l:<6} {_f(cka['per_layer'][l]):>7} {_f(cka['importance'][l]):>7} "
                     f"{_f(scores['act']['per_layer'][l]):>11}{note}")
    lines += ["", "what each method alone picks at this budget:"]
    for name, placement in choices.items():
        lines.append(f"  {name:<11} {placement.key}  ({placement.adapter_params(space):,} adapter params)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python search/score.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args)
        from trainables.data import DataError
        from trainables.model import ModelError

        from spaces.budget import BudgetError, make_budget
        from spaces.priors import method_choices
        from spaces.space import ModelSpace
        from trainables.prepare import prepare

        t0 = time.perf_counter()
        try:
            prep = prepare(cfg.to_dict())
        except (DataError, ModelError) as e:
            raise UsageError(str(e)) from None
        space = ModelSpace.from_dict(prep["space"])
        try:
            make_budget(space, cfg.search.budget, cfg.search.r_ref, 1)
        except BudgetError as e:
            raise UsageError(str(e)) from None
    except UsageError as e:
        return fail(str(e))
    from analysis.heatmap import plot_heatmap

    scores = prep["scores"]
    choices = method_choices(scores, space, cfg.search.budget, cfg.search.r_ref)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores_path = out / "scores.json"
    payload = {**scores, "model": cfg.model.name, "data": cfg.data.source, "budget": cfg.search.budget,
               "choices": {k: v.to_dict() for k, v in choices.items()}}
    scores_path.write_text(json.dumps(payload, indent=2))
    heatmap = plot_heatmap(scores, out / "scores.png")
    print(f"model: {space.describe()}")
    print(f"calibration: {scores['n_examples']} examples, {scores['n_tokens']} tokens, pooling {scores['pooling']}; "
          f"priors took {prep['priors_s']:.2f}s (all of prepare {time.perf_counter() - t0:.1f}s)")
    print()
    print(format_scores(scores, space, choices))
    print()
    print(f"wrote {scores_path} and {heatmap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
