"""How often Tune snapshots the experiment state: often for small searches (little lost to a
resume), in proportion to the trials for sweeps (the snapshot's share of the loop stays flat)."""

import pytest

from search.phases import prepare as prepared


@pytest.mark.parametrize("trials, seconds", [(1, 2.0), (12, 2.0), (100, 2.0), (300, 6.0), (1000, 20.0)])
def test_period_grows_with_the_sweep(trials, seconds):
    assert prepared.snapshot_period(trials) == seconds


def test_the_users_own_setting_wins(monkeypatch):
    monkeypatch.setattr(prepared, "_USER_SNAPSHOT_S", None)
    assert prepared.snapshot_setting(1000) == "20"
    assert prepared.snapshot_setting(12) == "2"
    monkeypatch.setattr(prepared, "_USER_SNAPSHOT_S", "auto")
    assert prepared.snapshot_setting(1000) == "auto"
