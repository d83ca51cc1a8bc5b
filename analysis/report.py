"""Tables of trials: the end-of-run summary and CSV files.

Where it sits: track -> **frontier**: reads plain trial rows (from the tracker or MLflow), no torch.
"""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["trial_id", "run_id", "status", "pareto", "key", "rank", "lr", "metric", "trainable_params",
           "adapter_params", "gpu_hours", "epochs"]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict], metric_name: str, cost_unit: str, key_width: int = 48) -> str:
    """Trials sorted by metric (completed first), Pareto-optimal ones marked with `*`."""
    order = {"completed": 0, "pruned": 1, "running": 2, "failed": 3}
    rows = sorted(rows, key=lambda r: (order.get(r["status"], 4), -(r.get("metric") or 0)))
    head = (f"{'':1} {'placement':<{key_width}} {'lr':>8} {metric_name:>17} {'trainable':>10} "
            f"{cost_unit:>14} {'status':<9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        key = f"[{r['baseline']}] {r['key']}" if r.get("baseline") else r["key"]
        key = key if len(key) <= key_width else key[: key_width - 3] + "..."
        score = r.get("metric") if r["status"] == "completed" else r.get("last_score")
        lines.append(
            f"{'*' if r.get('pareto') else ' ':1} {key:<{key_width}} {_fmt(r.get('lr'), '.2e'):>8} {_fmt(score, '.4f'):>17} "
            f"{_fmt(r.get('trainable_params'), ','):>10} {_fmt(r.get('gpu_hours'), '.5f'):>14} {r['status']:<9}"
        )
    lines.append("[name] = a hand-crafted baseline, fitted to the budget")
    lines.append(f"* = Pareto-optimal among completed trials ({metric_name} up, trainable params down, "
                 f"{cost_unit} down); scores of stopped trials are their last epoch's")
    return "\n".join(lines)


def write_rows(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
