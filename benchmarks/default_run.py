"""Where the time of the default run goes: preparing, the learning-rate probe, the search, the
confirmation, the end.

    python -m benchmarks.default_run                          # runs `search/run.py --budget 0.5`
    python -m benchmarks.default_run --output-dir outputs/bench-default --set search.trials=12

Runs the main command (its own process, the default config unless --config says otherwise),
then reads the phase times the driver logs on the search's MLflow run (prepare_s, calibration_s,
search_s, confirmation_s and the whole search_wall_s) and prints them with the load average of
the machine before and after (the run is only as fast as the cores it gets: run it alone).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("prepare_s", "calibration_s", "search_s", "confirmation_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=None, help="config name(s) or path(s), layered")
    p.add_argument("--budget", default="0.5")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/bench-default"))
    p.add_argument("--experiment", default=f"default-{time.strftime('%Y%m%d-%H%M%S')}")
    args = p.parse_args()
    load_before = os.getloadavg()
    configs = sum((["--config", c] for c in args.config or ["default"]), [])
    cmd = [sys.executable, str(ROOT / "search" / "run.py"), *configs, "--budget", args.budget,
           "--output-dir", str(args.output_dir), "--experiment", args.experiment,
           *sum((["--set", s] for s in args.overrides), [])]
    t0 = time.time()
    log = args.output_dir / f"{args.experiment}.log"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.time() - t0
    if code != 0:
        sys.exit(f"the run failed (exit {code}); see {log}")
    from analysis.mlflow_read import find_parent, open_store

    parent = find_parent(open_store(f"sqlite:///{(args.output_dir / 'mlflow.db').resolve()}"), experiment=args.experiment)
    m = parent.data.metrics
    print(f"`{' '.join(cmd[1:])}`: {wall / 60:.1f} min in all (process start to exit); load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| phase | seconds | share |")
    print("| --- | --- | --- |")
    for name in PHASES:
        if name in m:
            print(f"| {name[:-2]} | {m[name]:.0f} | {m[name] / wall:.0%} |")
    rest = wall - sum(m.get(n, 0.0) for n in PHASES)
    print(f"| start, frontier, report, exit | {rest:.0f} | {rest / wall:.0%} |")
    print(f"\nlog: {log}")


if __name__ == "__main__":
    main()
