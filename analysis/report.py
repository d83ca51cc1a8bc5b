"""Tables of trials: the end-of-run summary and CSV files.

Where it sits: track -> **frontier**: reads `TrialRecord`s (from the tracker or MLflow), no torch.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from analysis.direction import best_first, word
from trainables import record as R
from trainables.record import COMPLETED, CSV_COLUMNS, TrialRecord


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(records: list[TrialRecord], metric_name: str, cost_unit: str, key_width: int = 48,
                 confirmed: bool = False) -> str:
    """Trials sorted by score, best first in the metric's direction (`trainables.record.sense`;
    completed first), Pareto-optimal ones marked with `*`: among the completed trials' single runs,
    or (`confirmed`) among the confirmed placements' seed means, which is the frontier
    `search.phases.publish` publishes when placements were confirmed."""
    sense = R.sense(metric_name)
    order = {"completed": 0, "pruned": 1, "running": 2, "failed": 3}
    records = sorted(records, key=lambda r: (order.get(r.status, 4), best_first(r.score, sense)))
    head = (f"{'':1} {'placement':<{key_width}} {'lr':>8} {metric_name:>17} {'trainable':>10} "
            f"{cost_unit:>14} {'status':<9}")
    lines = [head, "-" * len(head)]
    for r in records:
        key = f"[{r.baseline}] {r.key}" if r.baseline else r.key
        key = f"(warm) {key}" if r.warm_start else key
        key = key if len(key) <= key_width else key[: key_width - 3] + "..."
        score = r.score if r.status == COMPLETED else r.last_score
        lines.append(
            f"{'*' if r.pareto else ' ':1} {key:<{key_width}} {_fmt(r.lr, '.2e'):>8} {_fmt(score, '.4f'):>17} "
            f"{_fmt(r.trainable_params, ','):>10} {_fmt(r.compute_hours, '.5f'):>14} {r.status:<9}"
        )
    lines.append("[name] = a hand-crafted baseline, fitted to the budget"
                 + ("; (warm) = copied from an earlier search, not trained here" if any(r.warm_start for r in records) else ""))
    among = "the confirmed placements, over seed means (table below)" if confirmed else "completed trials"
    lines.append(f"* = Pareto-optimal among {among} ({metric_name} {word(sense, 'up', 'down')}, trainable params down, "
                 f"{cost_unit} down); scores of stopped trials are their last epoch's")
    return "\n".join(lines)


def write_rows(records: list[TrialRecord], path: Path) -> None:
    write_dicts([r.as_dict() for r in records], path, CSV_COLUMNS)


def read_rows(path: Path) -> list[TrialRecord]:
    """The records a trials CSV holds (`write_rows`'s columns), in file order: an empty cell is None
    where the field may be None, numbers and flags are typed as `TrialRecord` declares them, and a
    field the CSV lacks keeps its default."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(TrialRecord)}
    with open(path, newline="") as f:
        return [TrialRecord(**{k: _cell(v, kinds[k]) for k, v in row.items() if k in kinds})
                for row in csv.DictReader(f)]


def _cell(text: str, kind: str):
    """One CSV cell as a field of type `kind` ("int | None", "str", "bool", ...)."""
    base, optional = kind.split(" | ")[0], kind.endswith("| None")
    if optional and text == "":
        return None
    parse = {"int": lambda t: int(float(t)), "float": float, "bool": lambda t: t == "True"}.get(base, str)
    return parse(text)


def write_dicts(rows: list[dict], path: Path, columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
