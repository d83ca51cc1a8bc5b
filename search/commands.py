"""The `lora-placement` command: one entry point, a subcommand per script.

    lora-placement run --config smoke        # python search/run.py --config smoke
    lora-placement score --budget 0.5        # python search/score.py --budget 0.5
    lora-placement report --experiment NAME  # python search/report.py --experiment NAME
    lora-placement deploy --run-id RUN_ID    # python search/deploy.py --run-id RUN_ID

Where it sits: above the scripts (installed by `pip install -e .` from pyproject.toml's
`[project.scripts]`). The rest of the command line goes, as it is, to the script's `main`; a
script is imported only when its subcommand runs (`run` imports Ray inside its own `main`).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module whose `main(argv)` runs it, what it does)
COMMANDS = {
    "run": ("search.run", "search for where to put LoRA adapters within a budget (python search/run.py)"),
    "score": ("search.score", "score a model's sites with the priors, before any training (python search/score.py)"),
    "report": ("search.report", "rebuild a search's table, frontier and plots from MLflow (python search/report.py)"),
    "deploy": ("search.deploy", "export a trial's adapter, or its LoraConfig alone (python search/deploy.py)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lora-placement {" + ",".join(COMMANDS) + "} [ARGS ...]", "",
             "Where to put LoRA adapters under a trainable-parameter budget. Subcommands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "lora-placement SUBCOMMAND --help shows a subcommand's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(f"{usage()}\n\nerror: name a subcommand: one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown subcommand {name!r}: use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
