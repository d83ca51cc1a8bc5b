"""Export one trial's trained LoRA adapter for deployment, and mark it in MLflow.

    python search/deploy.py --run-id TRIAL_RUN_ID                     # store: sqlite:///outputs/mlflow.db
    python search/deploy.py --run-id TRIAL_RUN_ID --tracking-uri http://127.0.0.1:5000 --output my-adapter
    python search/deploy.py --run-id TRIAL_RUN_ID --lora-config-only --output my-lora   # the LoraConfig alone

Where it sits: after the frontier; the work is `search.tracking.export` (the folder, the registry version
with alias `deploy`, the tags). Only a completed trial with an adapter can be deployed; anything
else is refused with one line that names the fix (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.mlflow_read import DEFAULT_TRACKING_URI
from search.cli import fail, mlflow_client_defaults
from search.runtime.checks import check_output_dir
from search.runtime.errors import UsageError
from search.tracking.export import DeployError, deploy, export_lora_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python search/deploy.py",
        description="Export a completed trial's LoRA adapter into a folder PeftModel.from_pretrained loads, "
        "tag the run deployed=true and register it (alias 'deploy') where the store has a model registry.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run-id", required=True, help="the trial's MLflow run id (e.g. one tagged pareto=true)")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow store: sqlite:///path or http://host:port")
    p.add_argument("--output", default=None, help="folder to write (default: outputs/deploy/<run id>)")
    p.add_argument("--model-name", default=None, help="registered model name (default: the experiment name)")
    p.add_argument("--no-register", action="store_true", help="do not create a model registry version")
    p.add_argument("--force", action="store_true", help="write into a non-empty --output folder")
    p.add_argument("--lora-config-only", action="store_true",
                   help="write only the trial's peft LoraConfig (adapter_config.json, loadable with "
                   "LoraConfig.from_pretrained; no weights, nothing registered or tagged), to train its placement "
                   "with your own trainer; any trial with a placement, completed or not")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mlflow_client_defaults()
    output = Path(args.output or f"outputs/deploy/{args.run_id}")
    try:
        check_output_dir(output, "--output")  # a file there: one line, before any download
        if args.lora_config_only:
            written = export_lora_config(args.tracking_uri, args.run_id, output, force=args.force)
            print(f"wrote the LoraConfig of {written['placement_key']} to {output / 'adapter_config.json'}: "
                  f"peft.LoraConfig.from_pretrained({str(output)!r}), then peft.get_peft_model(base, config) on "
                  f"{written['base_model']} loaded as the search loaded it")
            return 0
        info = deploy(args.tracking_uri, args.run_id, output, model_name=args.model_name, force=args.force,
                      registry=not args.no_register)
    except (DeployError, UsageError) as e:
        return fail(str(e))
    print(f"exported trial {info['trial_id']} ({info['placement_key']}, {info['metric_name']} {info['score']}) "
          f"to {output}")
    reg = info["registered_model"]
    if reg:
        print(f"registered {reg['uri']} (version {reg['version']})")
    else:
        print("not registered: " + ("--no-register" if args.no_register else "the store has no model registry"))
    print(f"run {args.run_id} tagged deployed=true; load with PeftModel.from_pretrained(base_model, {str(output)!r}) "
          f"(see {output / 'README.txt'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
