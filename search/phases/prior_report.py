"""At the end of a search: which prior was right, from the search's own completed trials.

Where it sits: frontier. `analysis.importance` estimates each module kind's and each layer's
effect on the score from the completed runs (the search's trials and the confirmation runs) and
compares each prior's ordering with it (PLoP for kinds; CKA, activation and KappaTune for layers;
KappaTune for kinds too). The report is printed, and logged on the search's MLflow run as
`prior_quality.json` and `prior_quality.png`. A prior is right when the units it favours make the
metric better, in the metric's direction (`sense`: lower is better for `nll`).
"""

from __future__ import annotations

import json
from pathlib import Path

from analysis.importance import features, format_agreement, plot_agreement, prior_agreement
from spaces.placement import Placement
from trainables.record import COMPLETED


def prior_report(space, scores, records, sense: str = "max") -> dict | None:
    """The report for a search's records (`space`: its `ModelSpace`, `scores`: its `PriorScores`,
    `sense`: its metric's direction); None without priors."""
    if scores is None:
        return None
    done = [r for r in records if r.status == COMPLETED and r.score is not None]
    rows = [features(Placement.from_key(r.key, space), r.lr) for r in done]
    return prior_agreement(rows, [r.score for r in done], scores, sense=sense)


def publish_prior_report(client, parent_run_id: str, space, scores, records, output_dir: Path,
                         prefix: str, sense: str = "max") -> str | None:
    """Print-ready text of the report, after logging it (JSON and a plot) on the search's run."""
    report = prior_report(space, scores, records, sense)
    if report is None:
        return None
    kinds = list(space.aliases)
    path = Path(output_dir) / f"{prefix}prior_quality.json"
    path.write_text(json.dumps({**report, "kinds": kinds,
                                "agreements": [a.__dict__ for a in report["agreements"]]}, indent=1))
    plot = plot_agreement(report, kinds, Path(output_dir) / f"{prefix}prior_quality.png")
    for p in (path, plot):
        client.log_artifact(parent_run_id, str(p))
    return format_agreement(report, kinds)
