"""The slow tier's split into two processes (scripts/test.sh) keeps each shared search in one of them."""

import re
import subprocess

from tests.conftest import ROOT

SHARED = ("smoke_search", "served_search")  # the session fixtures that run a search (tests/conftest.py)


def side_files() -> list[str]:
    """SLOW_SIDE of scripts/test.sh: the files its second slow process runs."""
    text = (ROOT / "scripts" / "test.sh").read_text()
    found = re.search(r"^SLOW_SIDE=\(([^)]*)\)", text, re.M)
    assert found, "scripts/test.sh has no SLOW_SIDE=(...) list"
    return found.group(1).split()


def test_the_side_process_holds_slow_tests_and_no_shared_search():
    files = side_files()
    assert files and len(set(files)) == len(files)
    for name in files:
        path = ROOT / name
        assert path.is_file(), f"scripts/test.sh SLOW_SIDE names {name}, which does not exist"
        text = path.read_text()
        assert "pytest.mark.slow" in text, f"{name} holds no slow test: the side process would collect nothing"
        used = [f for f in SHARED if re.search(rf"\b{f}\b", text)]
        # such a file would build the shared search a second time, beside the other process's
        assert not used, f"{name} reads {used}: keep it in the main slow process"


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "test.sh")]).returncode == 0
