"""Bad input: one line naming the value and the fix, exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "search" / "run.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    (["--budget", "1.5"], "search.budget 1.5 is outside (0, 1]"),
    (["--budget", "0"], "search.budget 0.0 is outside (0, 1]"),
    (["--set", "train.nope=1"], "unknown key train.nope"),
    (["--set", "search.ranks=[0, 4]"], "search.ranks [0, 4] must be a non-empty list of ranks >= 1"),
    (["--config", "missing-config"], "config 'missing-config' not found"),
    (["--set", "model.name=./no/such/model"], "model path ./no/such/model does not exist"),
    (["--set", "data.source=/no/such/file.csv"], "data file /no/such/file.csv does not exist"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    out = run_cli("--config", "smoke", "--output-dir", str(tmp_path / "out"), *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_missing_column_is_caught_before_any_trial(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("sentence,label\n" + "\n".join(f"s{i},{i % 2}" for i in range(50)))
    out = run_cli("--config", "smoke", "--output-dir", str(tmp_path / "out"),
                  "--set", f"data.source={data}", "--set", "model.name=minilm")
    assert out.returncode == 2 and "has no column 'text'" in out.stderr and "set data.text_column" in out.stderr


def test_help_documents_the_flags():
    out = run_cli("--help")
    assert out.returncode == 0
    for flag in ("--budget", "--trials", "--config", "--output-dir", "--tracking-uri", "--gpus-per-trial", "--seed"):
        assert flag in out.stdout
